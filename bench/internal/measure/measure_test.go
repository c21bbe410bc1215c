package measure

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestHistQuantiles(t *testing.T) {
	var h Hist
	if !math.IsNaN(h.Quantile(0.5)) {
		t.Fatalf("empty histogram: p50 = %v, want NaN", h.Quantile(0.5))
	}
	for i := 1; i <= 10000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want float64 // µs
	}{{0.5, 5000}, {0.9, 9000}, {0.99, 9900}, {0.999, 9990}, {1, 10000}} {
		got := h.Quantile(c.q)
		if math.Abs(got-c.want)/c.want > 0.01 {
			t.Errorf("q%v = %.1f µs, want %.0f within 1%%", c.q, got, c.want)
		}
	}
	if h.MaxUs() != 10000 || h.Count() != 10000 {
		t.Errorf("max %v µs, count %d; want 10000 and 10000", h.MaxUs(), h.Count())
	}
	var o Hist
	o.Record(time.Second)
	o.Record(-time.Second) // counts as 0
	h.Merge(&o)
	if h.Count() != 10002 || h.MaxUs() != 1e6 {
		t.Errorf("after merge: count %d, max %v µs; want 10002 and 1e6", h.Count(), h.MaxUs())
	}
	if got := h.Quantile(0); got != 0 {
		t.Errorf("q0 after recording a negative duration = %v, want 0", got)
	}
}

func TestParseProc(t *testing.T) {
	// A command name with spaces and parentheses, then fields 3 onwards:
	// utime (14) = 1234, stime (15) = 56.
	stat := []byte("4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 1 0 100 1000 200")
	u, s, err := parseStat(stat)
	if err != nil || u != 1234 || s != 56 {
		t.Fatalf("parseStat = %d, %d, %v; want 1234, 56, nil", u, s, err)
	}
	if _, _, err := parseStat([]byte("4242 (x) S 1 2")); err == nil || !strings.Contains(err.Error(), "fields") {
		t.Errorf("short stat line: err = %v, want one naming the fields", err)
	}
	rss, hwm := parseStatus([]byte("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n"))
	if rss != 1024 || hwm != 2048 {
		t.Errorf("parseStatus = %d, %d; want 1024, 2048", rss, hwm)
	}
	busy, total := parseCPUTimes([]byte("cpu  9 9 9 9 9 9 9 9 9 9\ncpu0 10 0 5 80 5 0 0 0 7 0\ncpu1 1 1 1 1 1 1 1 1 0 0\nintr 1 2\n"))
	if len(busy) != 2 || busy[0] != 15 || total[0] != 100 || busy[1] != 6 || total[1] != 8 {
		t.Errorf("parseCPUTimes = %v, %v; want [15 6], [100 8] (guest time not counted twice)", busy, total)
	}
	if p, err := ParsePids("-pids", "12, 34,56"); err != nil || len(p) != 3 || p[2] != 56 {
		t.Errorf("ParsePids = %v, %v", p, err)
	}
	if _, err := ParsePids("-pids", "12,x"); err == nil || !strings.Contains(err.Error(), `-pids: "x"`) {
		t.Errorf("ParsePids(12,x): err = %v, want one naming the flag and the bad PID", err)
	}
}

func TestResultPrint(t *testing.T) {
	r := Result{Label: "sm", Mode: "stream", Conns: 1, Elapsed: 2 * time.Second, Requests: 100, Bytes: 4e6,
		Procs: true, CPU: 0.5, CPUSys: 0.1, RSSKB: 2048, CPUBusy: []float64{0.5, 1}}
	r.Lat.Record(time.Millisecond)
	var b bytes.Buffer
	r.Print(&b)
	line := b.String()
	for _, want := range []string{"label=sm mode=stream conns=1 secs=2.000 requests=100 errors=0 dropped=0 rps=50.0 p50_us=1000.0 ",
		" cpu_us_per_req=5000.0 sys_us_per_req=1000.0 cpu_cores=0.250 rss_kb=2048 ", " cpu_busy=0.50/1.00 ",
		" bytes=4000000 mb_per_s=2.00 cpu_us_per_mb=125000.0\n"} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
	if strings.Contains(line, "target_rps") {
		t.Errorf("closed-loop line %q has target_rps", line)
	}
}

// sleeper is a Doer that takes d per request (in the synctest bubble's
// fake time); fail makes every request fail with err.
type sleeper struct {
	d   time.Duration
	err error
}

func (s *sleeper) Do() error { time.Sleep(s.d); return s.err }
func (s *sleeper) Close()    {}

func TestClosedLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := Closed(4, func(int) Doer { return &sleeper{d: time.Millisecond} }, 10*time.Millisecond, 100*time.Millisecond, &Meter{})
		// 4 workers × 100 ms / 1 ms, give or take the one in flight at
		// each end of the window.
		if r.Requests < 396 || r.Requests > 404 || r.Errors != 0 {
			t.Errorf("requests %d, errors %d; want 400±4 and 0", r.Requests, r.Errors)
		}
		if p := r.Lat.Quantile(0.5); math.Abs(p-1000) > 10 {
			t.Errorf("p50 %v µs, want 1000", p)
		}
		if r.Rate != 0 || r.SchedLag != nil {
			t.Errorf("closed loop has rate %v / schedule lag", r.Rate)
		}
	})
}

func TestClosedLoopErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A status error is retried at once (here: after the 1 ms the
		// answer took); a connection error pauses 10 ms first.
		st := Closed(1, func(int) Doer { return &sleeper{d: time.Millisecond, err: ErrStatus} }, 0, 100*time.Millisecond, &Meter{})
		conn := Closed(1, func(int) Doer { return &sleeper{d: time.Millisecond, err: errors.New("refused")} }, 0, 100*time.Millisecond, &Meter{})
		if st.Errors < 99 || st.Errors > 101 || st.Requests != 0 {
			t.Errorf("status errors: %d errors, %d requests; want 100±1 and 0", st.Errors, st.Requests)
		}
		if conn.Errors < 9 || conn.Errors > 10 || conn.LastErr != "refused" {
			t.Errorf("connection errors: %d (last %q); want 9 or 10 (one per 11 ms) and \"refused\"", conn.Errors, conn.LastErr)
		}
	})
}

func TestOpenLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := Open(4, func(int) Doer { return &sleeper{d: time.Millisecond} }, 1000, 100, 5*time.Millisecond, 10*time.Millisecond, 100*time.Millisecond, &Meter{})
		if r.Requests < 99 || r.Requests > 101 || r.Dropped != 0 || r.Skipped != 0 || r.Rate != 1000 {
			t.Errorf("requests %d, dropped %d, skipped %d, rate %v; want 100±1, 0, 0, 1000", r.Requests, r.Dropped, r.Skipped, r.Rate)
		}
		if p := r.Lat.Quantile(0.99); math.Abs(p-1000) > 10 {
			t.Errorf("p99 %v µs, want 1000 (no queueing at this rate)", p)
		}
	})
}

// A stalled system under test: one worker, 20 ms per request, 1000
// requests/s. Latency runs from release, so the queue's wait counts, and
// a full queue drops requests instead of opening connections.
func TestOpenLoopStall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := Open(1, func(int) Doer { return &sleeper{d: 20 * time.Millisecond} }, 1000, 10, 5*time.Millisecond, 0, 200*time.Millisecond, &Meter{})
		if r.Dropped < 150 {
			t.Errorf("dropped %d, want most of the 200 released (queue of 10, 1 served per 20 ms)", r.Dropped)
		}
		if p := r.Lat.Quantile(0.99); p < 150_000 {
			t.Errorf("p99 %v µs, want ≥ 150 ms: time waiting in the queue counts", p)
		}
		if s := r.Svc.Quantile(0.5); math.Abs(s-20_000) > 200 {
			t.Errorf("service p50 %v µs, want 20 ms", s)
		}
	})
}
