package outlier

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func addrs(n int) []string {
	a := make([]string, n)
	for i := range a {
		a[i] = fmt.Sprintf("198.18.0.%d:80", i+1)
	}
	return a
}

type harness struct {
	d       *Detector
	changes atomic.Int32
}

// start builds a detector over hosts and runs it until the test ends. Call
// it inside a synctest bubble: Run's first tick is one interval after the
// call returns.
func start(t *testing.T, cfg Config, hosts []string) *harness {
	t.Helper()
	h := &harness{}
	h.d = New(cfg, Options{
		Rand:     rand.New(rand.NewPCG(1, 2)),
		OnChange: func() { h.changes.Add(1) },
	})
	h.d.SetHosts(hosts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		h.d.Run(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	synctest.Wait()
	return h
}

func (h *harness) host(t *testing.T, addr string) *Host {
	t.Helper()
	x := h.d.Host(addr)
	if x == nil {
		t.Fatalf("Host(%q) = nil", addr)
	}
	return x
}

func record(h *Host, r Result, n int) {
	for range n {
		h.Record(r)
	}
}

// advance moves fake time forward and lets Run process any tick due.
func advance(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

func TestConsecutive5xxEjectsAtExactlyN(t *testing.T) {
	tests := []struct {
		name        string
		threshold   *uint32 // nil: default 5
		seq         []Result
		wantEjectAt int // index in seq of the result that ejects; -1 never
	}{
		{"default 5", nil, []Result{500, 500, 500, 500, 500}, 4},
		{"threshold 3", new(uint32(3)), []Result{500, 501, 599}, 2},
		{"success resets", nil, []Result{500, 500, 500, 500, 200, 500, 500, 500, 500, 500}, 9},
		{"4xx resets", nil, []Result{500, 500, 500, 500, 404, 500, 500, 500, 500}, -1},
		{"threshold 0 disables", new(uint32(0)), []Result{500, 500, 500, 500, 500, 500, 500}, -1},
		{"gateway errors are 5xx", nil, []Result{502, 503, 504, 502, 503}, 4},
		{"600 is not 5xx", nil, []Result{500, 500, 500, 500, 600, 500}, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := start(t, Config{Consecutive5xx: tt.threshold}, addrs(10))
				x := h.host(t, "198.18.0.1:80")
				for i, r := range tt.seq {
					x.Record(r)
					if got, want := x.Ejected(), tt.wantEjectAt >= 0 && i >= tt.wantEjectAt; got != want {
						t.Fatalf("after result %d (%d): Ejected() = %v, want %v", i, r, got, want)
					}
				}
				if tt.wantEjectAt >= 0 {
					if x.Ejections() != 1 || h.changes.Load() != 1 {
						t.Errorf("Ejections() = %d, OnChange calls = %d; want 1, 1", x.Ejections(), h.changes.Load())
					}
					if got := h.d.Stats().EjectionsEnforced[Consecutive5xx]; got != 1 {
						t.Errorf("ejections_enforced_consecutive_5xx = %d, want 1", got)
					}
				}
			})
		})
	}
}

func TestConsecutiveGatewayFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// enforcing_consecutive_gateway_failure defaults to 0: enable it.
		// consecutive_5xx is disabled so that only gateway streaks count.
		h := start(t, Config{
			EnforcingConsecutiveGatewayFailure: new(uint32(100)),
			Consecutive5xx:                     new(uint32(0)),
		}, addrs(10))
		x := h.host(t, "198.18.0.1:80")
		// A 500 ends a gateway streak (but not a 5xx streak).
		for _, r := range []Result{502, 503, 504, 502, 500, 503, 504, 502, 503} {
			x.Record(r)
		}
		if x.Ejected() {
			t.Fatal("ejected after a gateway streak of 4")
		}
		x.Record(504)
		if !x.Ejected() {
			t.Fatal("not ejected after a gateway streak of 5")
		}
		if got := h.d.Stats().EjectionsEnforced[ConsecutiveGatewayFailure]; got != 1 {
			t.Errorf("ejections_enforced_consecutive_gateway_failure = %d, want 1", got)
		}
	})
}

func TestUnejectAfterBaseTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, addrs(10)) // interval 10s, base 30s
		x := h.host(t, "198.18.0.1:80")
		t0 := time.Now()
		record(x, 500, 5)
		if !x.Ejected() {
			t.Fatal("not ejected")
		}
		if got, want := x.EjectedUntil(), t0.Add(30*time.Second); !got.Equal(want) {
			t.Errorf("EjectedUntil = %v, want %v", got, want)
		}
		advance(29 * time.Second) // ticks at 10s and 20s
		if !x.Ejected() {
			t.Fatal("unejected before base_ejection_time")
		}
		advance(time.Second) // tick at 30s
		if x.Ejected() {
			t.Fatal("still ejected at base_ejection_time")
		}
		if !x.EjectedUntil().IsZero() {
			t.Errorf("EjectedUntil = %v after un-ejection, want zero", x.EjectedUntil())
		}
		if h.changes.Load() != 2 {
			t.Errorf("OnChange calls = %d, want 2 (eject, uneject)", h.changes.Load())
		}
		// The streak was reset on un-ejection: one more 5xx does not eject.
		x.Record(500)
		if x.Ejected() {
			t.Error("re-ejected by a single 5xx after un-ejection")
		}
	})
}

func TestUnejectWaitsForTick(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, addrs(10))
		x := h.host(t, "198.18.0.1:80")
		advance(5 * time.Second)
		record(x, 500, 5) // ejected at 5s until 35s
		advance(30 * time.Second)
		if !x.Ejected() {
			t.Fatal("unejected at 35s; Envoy un-ejects on the interval tick (40s)")
		}
		advance(5 * time.Second)
		if x.Ejected() {
			t.Fatal("still ejected at the 40s tick")
		}
	})
}

func TestBackoffGrowthAndDecay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, addrs(10)) // interval 10s, base 30s, max 300s
		x := h.host(t, "198.18.0.1:80")
		multiplier := func() uint32 { return h.d.Stats().Hosts[0].Multiplier }

		record(x, 500, 5) // t=0: first ejection, 1 × 30s
		if multiplier() != 1 {
			t.Fatalf("multiplier = %d after first ejection, want 1", multiplier())
		}
		advance(30 * time.Second)
		if x.Ejected() {
			t.Fatal("first ejection lasted more than 30s")
		}

		t1 := time.Now()
		record(x, 500, 5) // t=30s: second ejection, 2 × 30s
		if multiplier() != 2 {
			t.Fatalf("multiplier = %d after second ejection, want 2", multiplier())
		}
		if got, want := x.EjectedUntil(), t1.Add(60*time.Second); !got.Equal(want) {
			t.Errorf("EjectedUntil = %v, want %v", got, want)
		}
		advance(59 * time.Second)
		if !x.Ejected() {
			t.Fatal("second ejection lasted less than 60s")
		}
		advance(time.Second) // t=90s
		if x.Ejected() {
			t.Fatal("second ejection lasted more than 60s")
		}
		if multiplier() != 2 {
			t.Fatalf("multiplier = %d at un-ejection, want 2", multiplier())
		}
		// −1 per interval in service since the un-ejection.
		for _, want := range []uint32{1, 0, 0} {
			advance(10 * time.Second)
			if multiplier() != want {
				t.Fatalf("multiplier = %d at %v, want %d", multiplier(), time.Since(t1), want)
			}
		}
		t2 := time.Now()
		record(x, 500, 5) // decayed: back to 1 × 30s
		if got, want := x.EjectedUntil(), t2.Add(30*time.Second); !got.Equal(want) {
			t.Errorf("EjectedUntil after decay = %v, want %v", got.Sub(t2), 30*time.Second)
		}
	})
}

func TestMaxEjectionTimeCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{
			Interval:         time.Second,
			BaseEjectionTime: 10 * time.Second,
			MaxEjectionTime:  25 * time.Second,
		}, addrs(10))
		x := h.host(t, "198.18.0.1:80")
		// Multiplier grows while multiplier × base < max + base (35s):
		// 1, 2, 3, 4, then stays 4; the time is min(10s × m, 25s).
		want := []struct {
			multiplier uint32
			lasted     time.Duration
		}{{1, 10 * time.Second}, {2, 20 * time.Second}, {3, 25 * time.Second}, {4, 25 * time.Second}, {4, 25 * time.Second}}
		for i, w := range want {
			t0 := time.Now()
			record(x, 500, 5)
			if !x.Ejected() {
				t.Fatalf("ejection %d: not ejected", i+1)
			}
			if m := h.d.Stats().Hosts[0].Multiplier; m != w.multiplier {
				t.Errorf("ejection %d: multiplier = %d, want %d", i+1, m, w.multiplier)
			}
			for x.Ejected() {
				advance(time.Second)
			}
			if got := time.Since(t0); got != w.lasted {
				t.Errorf("ejection %d lasted %v, want %v", i+1, got, w.lasted)
			}
		}
	})
}

func TestMaxEjectionTimeJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{
			MaxEjectionTimeJitter: 5 * time.Second,
			MaxEjectionPercent:    new(uint32(100)),
		}, addrs(10))
		t0 := time.Now()
		seen := map[time.Duration]bool{}
		for _, a := range addrs(10) {
			x := h.host(t, a)
			record(x, 500, 5)
			d := x.EjectedUntil().Sub(t0)
			if d < 30*time.Second || d > 35*time.Second {
				t.Errorf("%s: ejection time %v, want within [30s, 35s]", a, d)
			}
			seen[d] = true
		}
		if len(seen) < 5 {
			t.Errorf("10 jittered ejections gave only %d distinct times: %v", len(seen), seen)
		}
		// Un-ejection honours the jitter: nobody returns before 30s, all by
		// the 40s tick.
		advance(29 * time.Second)
		if n := h.d.Stats().EjectionsActive; n != 10 {
			t.Errorf("at 29s %d hosts ejected, want 10", n)
		}
		advance(11 * time.Second)
		if n := h.d.Stats().EjectionsActive; n != 0 {
			t.Errorf("at 40s %d hosts ejected, want 0", n)
		}
	})
}

func TestMaxEjectionPercent(t *testing.T) {
	tests := []struct {
		hosts    int
		percent  *uint32
		ejectOne bool
		want     int
	}{
		{10, nil, true, 1},              // 1/10 = 10% ≤ 10%; 2/10 = 20% > 10%
		{10, nil, false, 1},             // same without the difference
		{3, nil, true, 1},               // 1/3 = 33% > 10%, but one may go
		{3, nil, false, 0},              // Envoy: a 3-host cluster never ejects
		{10, new(uint32(20)), false, 2}, // 2/10 = 20% ≤ 20%
		{3, new(uint32(0)), true, 1},    // 0% still lets one go
		{3, new(uint32(0)), false, 0},   //
		{3, new(uint32(100)), false, 3}, // everyone
		{3, new(uint32(67)), false, 2},  // 2/3 = 66.7% ≤ 67%
		{1, nil, true, 1},               // a lone host may be ejected
	}
	for _, tt := range tests {
		pct := "default"
		if tt.percent != nil {
			pct = fmt.Sprint(*tt.percent)
		}
		t.Run(fmt.Sprintf("hosts=%d,percent=%s,always_eject_one_host=%v", tt.hosts, pct, tt.ejectOne), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := start(t, Config{MaxEjectionPercent: tt.percent, AlwaysEjectOneHost: new(tt.ejectOne)}, addrs(tt.hosts))
				for _, a := range addrs(tt.hosts) {
					record(h.host(t, a), 500, 5)
				}
				s := h.d.Stats()
				if s.EjectionsActive != tt.want {
					t.Errorf("ejected %d hosts, want %d", s.EjectionsActive, tt.want)
				}
				if got := int(s.EjectionsOverflow); got != tt.hosts-tt.want {
					t.Errorf("ejections_overflow = %d, want %d", got, tt.hosts-tt.want)
				}
				n := 0
				for _, hs := range s.Hosts {
					if hs.Ejected {
						n++
					}
				}
				if n != s.EjectionsActive {
					t.Errorf("%d hosts report Ejected, EjectionsActive = %d", n, s.EjectionsActive)
				}
			})
		})
	}
}

// fill records successes and failures (interleaved, so that no streak
// forms) on a host.
func fill(x *Host, ok, failed int, fail Result) {
	for i := range max(ok, failed) {
		if i < ok {
			x.Record(200)
		}
		if i < failed {
			x.Record(fail)
		}
	}
}

func TestSuccessRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Consecutive detection off, so that only the success rate ejects.
		h := start(t, Config{Consecutive5xx: new(uint32(0))}, addrs(11))
		hosts := addrs(11)
		// Hosts 1-9: 100/100 succeed. Host 10: 80/100. Host 11: 0/50, below
		// success_rate_request_volume (100), so not part of the statistics.
		//
		// Over the 10 hosts with volume: rates 100 ×9 and 80.
		//   mean     = (9·100 + 80) / 10          = 98
		//   variance = (9·(100−98)² + (80−98)²)/10 = (36 + 324)/10 = 36
		//   stdev    = 6
		//   cut      = 98 − 1.9·6                  = 86.6
		// Only host 10 (80 < 86.6) is an outlier; 1 of 11 hosts is 9% ≤ 10%.
		for _, a := range hosts[:9] {
			fill(h.host(t, a), 100, 0, 500)
		}
		fill(h.host(t, hosts[9]), 80, 20, 500)
		fill(h.host(t, hosts[10]), 0, 50, 500)
		if h.d.Stats().EjectionsActive != 0 {
			t.Fatal("ejection before the interval ended")
		}
		advance(10 * time.Second)

		s := h.d.Stats()
		for i, hs := range s.Hosts {
			if hs.Ejected != (i == 9) {
				t.Errorf("host %d (%s) ejected = %v", i+1, hs.Address, hs.Ejected)
			}
		}
		if math.Abs(s.SuccessRateAverage-98) > 1e-9 || math.Abs(s.SuccessRateEjectionThreshold-86.6) > 1e-9 {
			t.Errorf("mean, cut = %v, %v; want 98, 86.6", s.SuccessRateAverage, s.SuccessRateEjectionThreshold)
		}
		if s.EjectionsEnforced[SuccessRate] != 1 {
			t.Errorf("ejections_enforced_success_rate = %d, want 1", s.EjectionsEnforced[SuccessRate])
		}
		// Host 11 is reported (50 ≥ min of both volumes) but was judged
		// only by failure percentage: 100% ≥ 85% is detected, and
		// enforcing_failure_percentage defaults to 0, so not ejected.
		if got := s.Hosts[10].SuccessRate; got != 0 {
			t.Errorf("host 11 success rate = %v, want 0", got)
		}
		if s.Hosts[0].SuccessRate != 100 || s.Hosts[9].SuccessRate != 80 {
			t.Errorf("success rates = %v, %v; want 100, 80", s.Hosts[0].SuccessRate, s.Hosts[9].SuccessRate)
		}
		if s.EjectionsDetected[FailurePercentage] != 1 || s.EjectionsEnforced[FailurePercentage] != 0 {
			t.Errorf("failure_percentage detected, enforced = %d, %d; want 1, 0",
				s.EjectionsDetected[FailurePercentage], s.EjectionsEnforced[FailurePercentage])
		}

		// The next interval has no traffic: nothing to judge.
		advance(10 * time.Second)
		s = h.d.Stats()
		if s.SuccessRateAverage != -1 || s.Hosts[0].SuccessRate != -1 {
			t.Errorf("after an idle interval: mean = %v, host 1 rate = %v; want -1, -1", s.SuccessRateAverage, s.Hosts[0].SuccessRate)
		}
	})
}

func TestSuccessRateNeedsMinimumHosts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{Consecutive5xx: new(uint32(0))}, addrs(10))
		hosts := addrs(10)
		// Only 4 hosts reach the volume (< success_rate_minimum_hosts 5);
		// the others have 99 requests.
		for _, a := range hosts[:3] {
			fill(h.host(t, a), 100, 0, 500)
		}
		fill(h.host(t, hosts[3]), 10, 90, 500)
		for _, a := range hosts[4:] {
			fill(h.host(t, a), 99, 0, 500)
		}
		advance(10 * time.Second)
		s := h.d.Stats()
		if s.EjectionsActive != 0 || s.SuccessRateAverage != -1 {
			t.Errorf("ejected %d, mean %v; want 0, -1", s.EjectionsActive, s.SuccessRateAverage)
		}
	})
}

func TestFailurePercentage(t *testing.T) {
	tests := []struct {
		name      string
		enforcing *uint32
		want      []bool // ejected, by host
	}{
		{"enforced", new(uint32(100)), []bool{true, false, false, false, false, false}},
		{"enforcing 0 (default)", nil, []bool{false, false, false, false, false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := start(t, Config{
					Consecutive5xx:             new(uint32(0)),
					EnforcingFailurePercentage: tt.enforcing,
					MaxEjectionPercent:         new(uint32(50)),
				}, addrs(6))
				hosts := addrs(6)
				// failure_percentage_threshold 85, request_volume 50,
				// minimum_hosts 5:
				//   host 1: 51 of 60 fail = 85.0%  ≥ 85: outlier (boundary)
				//   host 2: 50 of 60 fail = 83.3%  < 85
				//   host 3: 40 of 40 fail, but 40 < 50 requests: not judged
				//   hosts 4-6: 0 of 60 fail
				// Judged hosts: 1, 2, 4, 5, 6 = 5 ≥ minimum_hosts. No host
				// reaches success_rate_request_volume (100).
				fill(h.host(t, hosts[0]), 9, 51, 500)
				fill(h.host(t, hosts[1]), 10, 50, 500)
				fill(h.host(t, hosts[2]), 0, 40, 500)
				for _, a := range hosts[3:] {
					fill(h.host(t, a), 60, 0, 500)
				}
				advance(10 * time.Second)
				s := h.d.Stats()
				for i, hs := range s.Hosts {
					if hs.Ejected != tt.want[i] {
						t.Errorf("host %d ejected = %v, want %v", i+1, hs.Ejected, tt.want[i])
					}
				}
				if s.EjectionsDetected[FailurePercentage] != 1 {
					t.Errorf("ejections_detected_failure_percentage = %d, want 1", s.EjectionsDetected[FailurePercentage])
				}
				if s.SuccessRateAverage != -1 {
					t.Errorf("success-rate mean = %v, want -1 (no host has the volume)", s.SuccessRateAverage)
				}
			})
		})
	}
}

func TestEnforcingZeroNeverEjects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{EnforcingConsecutive5xx: new(uint32(0))}, addrs(10))
		x := h.host(t, "198.18.0.1:80")
		record(x, 500, 100)
		if x.Ejected() {
			t.Fatal("ejected with enforcing_consecutive_5xx 0")
		}
		// Detected at 5, then the streak restarts: 100/5 = 20 detections.
		s := h.d.Stats()
		if s.EjectionsDetected[Consecutive5xx] != 20 || s.EjectionsEnforced[Consecutive5xx] != 0 {
			t.Errorf("detected, enforced = %d, %d; want 20, 0", s.EjectionsDetected[Consecutive5xx], s.EjectionsEnforced[Consecutive5xx])
		}
		if h.changes.Load() != 0 {
			t.Errorf("OnChange called %d times without an ejection", h.changes.Load())
		}
	})
}

func TestEnforcingPercentage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{EnforcingConsecutive5xx: new(uint32(30))}, addrs(10))
		x := h.host(t, "198.18.0.1:80")
		const n = 2000
		for range n {
			record(x, 500, 5)
			h.d.Uneject(x.Address())
		}
		// Binomial(2000, 0.3): mean 600, sd 20.5; ±80 is ~4 sd (fixed seed).
		s := h.d.Stats()
		if got := s.EjectionsEnforced[Consecutive5xx]; got < 520 || got > 680 {
			t.Errorf("enforced %d of %d detections at 30%%, want 600 ± 80", got, n)
		}
		if s.EjectionsDetected[Consecutive5xx] != n {
			t.Errorf("detected %d, want %d", s.EjectionsDetected[Consecutive5xx], n)
		}
	})
}

func TestLocalOriginSplit(t *testing.T) {
	const (
		cf = ConnectFailed
		cs = ConnectSuccess
	)
	tests := []struct {
		name     string
		split    bool
		seq      []Result
		wantType EjectionType // meaningful when wantEjected
		want     bool
	}{
		{"not split: connect failures are 503s", false, []Result{cf, cf, cf, cf, cf}, Consecutive5xx, true},
		{"not split: timeouts are 504s", false, []Result{Timeout, Timeout, Timeout, Timeout, Timeout}, Consecutive5xx, true},
		{"not split: resets are 503s", false, []Result{Reset, Reset, Reset, Reset, Reset}, Consecutive5xx, true},
		{"not split: mixed with 5xx", false, []Result{cf, 500, Timeout, 502, Reset}, Consecutive5xx, true},
		{"not split: ConnectSuccess is ignored", false, []Result{cf, cf, cf, cf, cs, cf}, Consecutive5xx, true},
		{"not split: ConnectSuccessFinal is a 200", false, []Result{cf, cf, cf, cf, ConnectSuccessFinal, cf}, 0, false},
		{"split: connect failures are local", true, []Result{cf, cf, cf, cf, cf}, ConsecutiveLocalOriginFailure, true},
		{"split: timeouts and resets are local", true, []Result{Timeout, Reset, Timeout, Reset, cf}, ConsecutiveLocalOriginFailure, true},
		{"split: ConnectSuccess ends a local streak", true, []Result{cf, cf, cf, cf, cs, cf}, 0, false},
		{"split: ConnectSuccessFinal ends a local streak", true, []Result{cf, cf, cf, cf, ConnectSuccessFinal, cf}, 0, false},
		{"split: a 200 does not end a local streak", true, []Result{cf, cf, cf, cf, 200, cf}, ConsecutiveLocalOriginFailure, true},
		{"split: local failures do not end a 5xx streak", true, []Result{500, cf, 500, cf, 500, cf, 500, cf, 500}, Consecutive5xx, true},
		{"split: ConnectSuccess does not end a 5xx streak", true, []Result{500, cs, 500, cs, 500, cs, 500, cs, 500}, Consecutive5xx, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := start(t, Config{SplitExternalLocalOriginErrors: tt.split}, addrs(10))
				x := h.host(t, "198.18.0.1:80")
				for _, r := range tt.seq {
					x.Record(r)
				}
				if x.Ejected() != tt.want {
					t.Fatalf("Ejected() = %v, want %v", x.Ejected(), tt.want)
				}
				if tt.want {
					if got := h.d.Stats().EjectionsEnforced[tt.wantType]; got != 1 {
						t.Errorf("ejections_enforced_%s = %d, want 1", tt.wantType, got)
					}
				}
			})
		})
	}
}

func TestLocalOriginSuccessRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{
			SplitExternalLocalOriginErrors: true,
			ConsecutiveLocalOriginFailure:  new(uint32(0)),
		}, addrs(5))
		hosts := addrs(5)
		// Local-origin rates 100, 100, 100, 100, 50 over 100 connects each:
		//   mean 90; variance (4·10² + 40²)/5 = 2000/5 = 400; stdev 20;
		//   cut 90 − 1.9·20 = 52; 50 < 52.
		// One host of 5 is 20% > 10%: ejected by always_eject_one_host.
		for _, a := range hosts[:4] {
			record(h.host(t, a), ConnectSuccess, 100)
		}
		for range 50 {
			h.host(t, hosts[4]).Record(ConnectSuccess)
			h.host(t, hosts[4]).Record(ConnectFailed)
		}
		// HTTP statuses are judged apart: all succeed.
		for _, a := range hosts {
			record(h.host(t, a), 200, 100)
		}
		advance(10 * time.Second)
		s := h.d.Stats()
		if !s.Hosts[4].Ejected || s.EjectionsActive != 1 {
			t.Fatalf("ejected: host 5 %v, total %d; want true, 1", s.Hosts[4].Ejected, s.EjectionsActive)
		}
		if s.EjectionsEnforced[SuccessRateLocalOrigin] != 1 {
			t.Errorf("ejections_enforced_success_rate_local_origin = %d, want 1", s.EjectionsEnforced[SuccessRateLocalOrigin])
		}
		if math.Abs(s.LocalOriginSuccessRateAverage-90) > 1e-9 || math.Abs(s.LocalOriginSuccessRateEjectionThreshold-52) > 1e-9 {
			t.Errorf("local mean, cut = %v, %v; want 90, 52", s.LocalOriginSuccessRateAverage, s.LocalOriginSuccessRateEjectionThreshold)
		}
		if s.SuccessRateAverage != 100 || s.Hosts[4].SuccessRate != 100 || s.Hosts[4].LocalOriginSuccessRate != 50 {
			t.Errorf("external mean %v, host 5 rates %v/%v; want 100, 100/50",
				s.SuccessRateAverage, s.Hosts[4].SuccessRate, s.Hosts[4].LocalOriginSuccessRate)
		}
	})
}

func TestUnejectByHealthCheck(t *testing.T) {
	for _, enabled := range []bool{true, false} {
		t.Run(fmt.Sprint("successful_active_health_check_uneject_host=", enabled), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := start(t, Config{SuccessfulActiveHealthCheckUnejectHost: new(enabled)}, addrs(10))
				x := h.host(t, "198.18.0.1:80")
				if h.d.Uneject(x.Address()) {
					t.Fatal("Uneject of a host in service reported true")
				}
				record(x, 500, 5)
				if got := h.d.Uneject(x.Address()); got != enabled {
					t.Fatalf("Uneject = %v, want %v", got, enabled)
				}
				if x.Ejected() == enabled {
					t.Errorf("Ejected() = %v after Uneject", x.Ejected())
				}
				want := int32(1) // the ejection
				if enabled {
					want = 2 // and the un-ejection
				}
				if h.changes.Load() != want {
					t.Errorf("OnChange calls = %d, want %d", h.changes.Load(), want)
				}
				if h.d.Uneject("198.18.9.9:80") {
					t.Error("Uneject of an unknown address reported true")
				}
			})
		})
	}
}

func TestSetHostsKeepsStateByAddress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		all := addrs(12)
		h := start(t, Config{}, all[:10])
		a := h.host(t, all[0])
		record(a, 500, 5)
		b := h.host(t, all[1])
		record(b, 500, 3) // a streak under way

		// Reorder, drop one, add two: a and b keep their state.
		h.d.SetHosts(append([]string{all[11], all[1], all[0]}, all[3:11]...))
		if h.d.Host(all[0]) != a || !a.Ejected() || a.Ejections() != 1 {
			t.Fatal("host a lost its state across SetHosts")
		}
		record(b, 500, 2) // b's streak reaches 5 across the update...
		// ...but 2 ejected of 11 hosts is 18% > max_ejection_percent.
		if h.d.Host(all[1]) != b || b.Ejected() || h.d.Stats().EjectionsOverflow != 1 {
			t.Fatalf("b's streak across SetHosts: ejected %v, overflow %d; want false, 1", b.Ejected(), h.d.Stats().EjectionsOverflow)
		}
		if h.d.Host(all[2]) != nil {
			t.Error("a removed host is still tracked")
		}
		// Removing the ejected host frees its place in the ejected count.
		h.d.SetHosts(all[1:11])
		if n := h.d.Stats().EjectionsActive; n != 0 {
			t.Errorf("EjectionsActive = %d after removing the ejected host, want 0", n)
		}
		// A removed host's Record has no effect and does not panic.
		record(a, 500, 10)
		// Re-added, it starts fresh.
		h.d.SetHosts(all)
		if n := h.d.Host(all[0]); n == a || n.Ejected() || n.Ejections() != 0 {
			t.Error("a re-added address did not start fresh")
		}
		// Duplicates count once.
		h.d.SetHosts([]string{all[0], all[0], all[1]})
		if n := len(h.d.Stats().Hosts); n != 2 {
			t.Errorf("%d hosts after SetHosts with a duplicate, want 2", n)
		}
	})
}

func TestConcurrentUse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hosts := addrs(20)
		h := start(t, Config{
			Interval:                           100 * time.Millisecond,
			BaseEjectionTime:                   300 * time.Millisecond,
			SuccessRateRequestVolume:           new(uint32(20)),
			EnforcingFailurePercentage:         new(uint32(100)),
			EnforcingConsecutiveGatewayFailure: new(uint32(50)),
			SplitExternalLocalOriginErrors:     true,
		}, hosts)
		var wg sync.WaitGroup
		results := []Result{200, 200, 200, 500, 503, 404, ConnectSuccess, ConnectFailed, Timeout, Reset, ConnectSuccessFinal}
		for w := range 8 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(w), 7))
				for i := range 20000 {
					if x := h.d.Host(hosts[r.IntN(len(hosts))]); x != nil {
						x.Record(results[r.IntN(len(results))])
						_ = x.Ejected()
					}
					if i%500 == 0 {
						time.Sleep(10 * time.Millisecond)
					}
				}
			})
		}
		wg.Go(func() {
			for i := range 100 {
				if i%10 == 0 {
					h.d.SetHosts(hosts[:15+i%6])
				}
				h.d.Uneject(hosts[i%len(hosts)])
				s := h.d.Stats()
				// 10% of at most 20 hosts is 2.
				if s.EjectionsActive > 2 {
					t.Errorf("%d hosts ejected, max_ejection_percent allows 2", s.EjectionsActive)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
		wg.Wait()
		s := h.d.Stats()
		n := 0
		for _, hs := range s.Hosts {
			if hs.Ejected {
				n++
			}
		}
		if n != s.EjectionsActive {
			t.Errorf("%d hosts report Ejected, EjectionsActive = %d", n, s.EjectionsActive)
		}
		if h.changes.Load() == 0 {
			t.Error("no ejection happened: the test exercised nothing")
		}
	})
}

func TestRecordDoesNotAllocate(t *testing.T) {
	// Streaks disabled: this measures the path every request takes.
	d := New(Config{Consecutive5xx: new(uint32(0)), ConsecutiveGatewayFailure: new(uint32(0))}, Options{})
	d.SetHosts(addrs(3))
	x := d.Host("198.18.0.1:80")
	for _, r := range []Result{200, 500, 503, ConnectSuccess, ConnectFailed, Timeout} {
		if n := testing.AllocsPerRun(1000, func() { x.Record(r) }); n != 0 {
			t.Errorf("Record(%d) allocates %v times per call", r, n)
		}
	}
}

func BenchmarkRecord(b *testing.B) {
	for _, bc := range []struct {
		name string
		r    Result
	}{{"success", 200}, {"5xx", 500}} {
		b.Run(bc.name, func(b *testing.B) {
			// Streaks never eject here (threshold 0), so this measures the
			// lock-free path alone.
			d := New(Config{Consecutive5xx: new(uint32(0)), ConsecutiveGatewayFailure: new(uint32(0))}, Options{})
			d.SetHosts(addrs(1))
			x := d.Host("198.18.0.1:80")
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					x.Record(bc.r)
				}
			})
		})
	}
}

func BenchmarkEjected(b *testing.B) {
	d := New(Config{}, Options{})
	d.SetHosts(addrs(1))
	x := d.Host("198.18.0.1:80")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if x.Ejected() {
				b.Fatal("ejected")
			}
		}
	})
}

func TestCanEnforce(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want []EjectionType
	}{
		{"Envoy's defaults", Config{}, []EjectionType{Consecutive5xx, SuccessRate}},
		{"enforcing 0 and threshold 0 turn types off", Config{EnforcingSuccessRate: new(uint32(0)), Consecutive5xx: new(uint32(0)),
			EnforcingFailurePercentage: new(uint32(1))}, []EjectionType{FailurePercentage}},
		{"split adds the local-origin types", Config{SplitExternalLocalOriginErrors: true, EnforcingFailurePercentageLocalOrigin: new(uint32(100))},
			[]EjectionType{Consecutive5xx, ConsecutiveLocalOriginFailure, SuccessRate, SuccessRateLocalOrigin, FailurePercentageLocalOrigin}},
		{"a local-origin threshold of 0", Config{SplitExternalLocalOriginErrors: true, ConsecutiveLocalOriginFailure: new(uint32(0))},
			[]EjectionType{Consecutive5xx, SuccessRate, SuccessRateLocalOrigin}},
	} {
		d := New(tc.cfg, Options{})
		var got []EjectionType
		for typ := range EjectionType(NumEjectionTypes) {
			if d.CanEnforce(typ) {
				got = append(got, typ)
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Counters is Stats without hosts.
func TestCountersMatchStats(t *testing.T) {
	d := New(Config{Consecutive5xx: new(uint32(2))}, Options{Rand: rand.New(rand.NewPCG(1, 2))})
	d.SetHosts([]string{"a", "b"})
	h := d.Host("a")
	h.Record(500)
	h.Record(500)
	st, c := d.Stats(), d.Counters()
	if c.Hosts != nil || c.EjectionsActive != 1 || c.EjectionsEnforced[Consecutive5xx] != 1 {
		t.Fatalf("counters %+v", c)
	}
	st.Hosts = nil
	if !reflect.DeepEqual(st, c) {
		t.Fatalf("Counters %+v != Stats %+v", c, st)
	}
}
