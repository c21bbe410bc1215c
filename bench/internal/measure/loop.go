package measure

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ErrStatus marks an answer that arrived but was not a success (HTTP
// status other than 200, gRPC status other than OK). The closed loop sends
// the next request at once after it; after any other error (a refused
// dial, a reset) it pauses 10 ms so as not to spin.
var ErrStatus = errors.New("non-success status")

// Doer sends one request and reads its whole answer. One Doer serves one
// worker, so it need not be safe for concurrent use.
type Doer interface {
	Do() error
	Close()
}

// Meter says what to account for besides requests: the proxy's processes,
// the load side's processes (backend and this generator), per-CPU busy time.
type Meter struct {
	Pids   []int // the proxy
	Aux    []int // backend + this generator
	ClkTck int   // clock ticks per second of /proc/PID/stat
}

// Counters are read at both ends of the measured window.
type Counters func() (requests, errors, bytes uint64)

// Window sleeps warmup, then measures a window of dur (WindowNow).
func Window(count Counters, measuring *atomic.Bool, warmup, dur time.Duration, m *Meter) Result {
	time.Sleep(warmup)
	return WindowNow(count, measuring, dur, m)
}

// WindowNow samples the processes and the counters, sets measuring for dur,
// and samples again. It does not collect histograms.
func WindowNow(count Counters, measuring *atomic.Bool, dur time.Duration, m *Meter) Result {
	var r Result
	p0, perr := SampleProcs(m.Pids)
	a0, aerr := SampleProcs(m.Aux)
	b0, t0s := CPUTimes()
	req0, err0, by0 := count()
	t0 := time.Now()
	measuring.Store(true)
	time.Sleep(dur)
	measuring.Store(false)
	req1, err1, by1 := count()
	r.Elapsed = time.Since(t0)
	p1, perr1 := SampleProcs(m.Pids)
	a1, aerr1 := SampleProcs(m.Aux)
	b1, t1s := CPUTimes()
	r.Requests, r.Errors, r.Bytes = req1-req0, err1-err0, by1-by0
	clk := float64(m.ClkTck)
	if clk <= 0 {
		clk = 100
	}
	if len(m.Pids) > 0 && perr == nil && perr1 == nil {
		r.Procs = true
		r.CPU = float64(p1.CPUTicks-p0.CPUTicks) / clk
		r.CPUSys = float64(p1.SysTicks-p0.SysTicks) / clk
		r.RSSKB, r.HWMKB = p1.RSSKB, p1.HWMKB
	} else if perr != nil || perr1 != nil {
		fmt.Fprintln(os.Stderr, "measure: reading /proc:", perr, perr1)
	}
	if aerr == nil && aerr1 == nil {
		r.LoadCores = float64(a1.CPUTicks-a0.CPUTicks) / clk / r.Elapsed.Seconds()
	}
	if len(b0) == len(b1) {
		for i := range b0 {
			if dt := t1s[i] - t0s[i]; dt > 0 {
				r.CPUBusy = append(r.CPUBusy, float64(b1[i]-b0[i])/float64(dt))
			}
		}
	}
	return r
}

// worker is one client's share of a loop's counters and histograms.
type worker struct {
	lat, svc Hist
	requests atomic.Uint64
	errors   atomic.Uint64
	lastErr  atomic.Value
}

func (w *worker) fail(err error) {
	w.errors.Add(1)
	w.lastErr.Store(err.Error())
}

func counters(ws []*worker) Counters {
	return func() (req, errs, _ uint64) {
		for _, w := range ws {
			req += w.requests.Load()
			errs += w.errors.Load()
		}
		return req, errs, 0
	}
}

func (r *Result) collect(ws []*worker) {
	for _, w := range ws {
		r.Lat.Merge(&w.lat)
		r.Svc.Merge(&w.svc)
		if e, ok := w.lastErr.Load().(string); ok {
			r.LastErr = e
		}
	}
}

// Closed runs n workers that each send their next request as soon as the
// previous answer is read, for dur after warmup.
func Closed(n int, newDoer func(i int) Doer, warmup, dur time.Duration, m *Meter) Result {
	var measuring, stop atomic.Bool
	ws := make([]*worker, n)
	var wg sync.WaitGroup
	for i := range ws {
		w := &worker{}
		ws[i] = w
		d := newDoer(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer d.Close()
			for !stop.Load() {
				t := time.Now()
				if err := d.Do(); err != nil {
					w.fail(err)
					if !errors.Is(err, ErrStatus) {
						time.Sleep(10 * time.Millisecond) // do not spin on a refused dial
					}
					continue
				}
				if measuring.Load() {
					dt := time.Since(t)
					w.lat.Record(dt)
					w.svc.Record(dt)
				}
				w.requests.Add(1)
			}
		}()
	}
	r := Window(counters(ws), &measuring, warmup, dur, m)
	stop.Store(true)
	wg.Wait()
	r.collect(ws)
	return r
}

// Open releases requests at rate to n workers through a queue of at most
// queue requests. A request's latency runs from its release: waiting in
// the queue for a free worker counts (a stall of the system under test
// delays every request behind it: no coordinated omission), the
// scheduler's own timer slack does not. On Linux a Go timer wakes up to
// ~1 ms late, so requests due meanwhile are released together when it
// wakes; that slack is reported as SchedLag. Slots reached more than maxLag
// late (the generator itself was not running) are skipped and counted, not
// released as a burst. A request that finds the queue full is dropped and
// counted, never sent by an extra worker.
func Open(n int, newDoer func(i int) Doer, rate float64, queue int, maxLag, warmup, dur time.Duration, m *Meter) Result {
	var measuring atomic.Bool
	var droppedMeasured, skippedMeasured atomic.Uint64
	type job struct {
		at       time.Time // when the scheduler released it
		measured bool
	}
	jobs := make(chan job, queue)
	ws := make([]*worker, n)
	var wg sync.WaitGroup
	for i := range ws {
		w := &worker{}
		ws[i] = w
		d := newDoer(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer d.Close()
			for j := range jobs {
				t := time.Now()
				err := d.Do()
				now := time.Now()
				if err != nil {
					w.fail(err)
					continue
				}
				if j.measured {
					w.lat.Record(now.Sub(j.at))
					w.svc.Record(now.Sub(t))
				}
				w.requests.Add(1)
			}
		}()
	}
	var lag Hist
	done := make(chan struct{})
	go func() { // scheduler
		defer close(done)
		interval := time.Duration(float64(time.Second) / rate)
		start := time.Now()
		end := start.Add(warmup + dur + 50*time.Millisecond)
		next := start
		for next.Before(end) {
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			now := time.Now()
			m := measuring.Load()
			for ; !next.After(now); next = next.Add(interval) {
				if m {
					lag.Record(now.Sub(next))
				}
				if now.Sub(next) > maxLag {
					// The generator itself was not running (CPU taken by
					// others): releasing this slot now would be a burst
					// the rate never asked for. Skip it and count it.
					if m {
						skippedMeasured.Add(1)
					}
					continue
				}
				select {
				case jobs <- job{at: now, measured: m}:
				default:
					if m {
						droppedMeasured.Add(1)
					}
				}
			}
		}
	}()
	r := Window(counters(ws), &measuring, warmup, dur, m)
	<-done
	close(jobs)
	wg.Wait()
	r.collect(ws)
	r.Rate = rate
	r.Dropped = droppedMeasured.Load()
	r.Skipped = skippedMeasured.Load()
	r.SchedLag = &lag
	return r
}
