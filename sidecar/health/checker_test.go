package health

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// fakeNet is a scripted set of hosts: each probe records when it started,
// takes delay[addr] of (fake) time, and answers verdict[addr].
type fakeNet struct {
	mu      sync.Mutex
	start   time.Time
	verdict map[string]verdict
	delay   map[string]time.Duration
	probes  map[string][]time.Duration // start of each probe, since start
	closed  map[string]int
}

func newFakeNet() *fakeNet {
	return &fakeNet{
		start:   time.Now(),
		verdict: map[string]verdict{},
		delay:   map[string]time.Duration{},
		probes:  map[string][]time.Duration{},
		closed:  map[string]int{},
	}
}

func (n *fakeNet) set(addr string, v verdict) {
	n.mu.Lock()
	n.verdict[addr] = v
	n.mu.Unlock()
}

func (n *fakeNet) setDelay(addr string, d time.Duration) {
	n.mu.Lock()
	n.delay[addr] = d
	n.mu.Unlock()
}

func (n *fakeNet) probeTimes(addr string) []time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.probes[addr])
}

func (n *fakeNet) closes(addr string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed[addr]
}

func (n *fakeNet) prober(addr string) prober { return &fakeProber{addr: addr, n: n} }

type fakeProber struct {
	addr string
	n    *fakeNet
}

func (p *fakeProber) probe(ctx context.Context) result {
	p.n.mu.Lock()
	p.n.probes[p.addr] = append(p.n.probes[p.addr], time.Since(p.n.start))
	v, d := p.n.verdict[p.addr], p.n.delay[p.addr]
	p.n.mu.Unlock()
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return result{verdict: failCounted, err: ctx.Err()}
		}
	}
	if v == pass {
		return result{verdict: pass}
	}
	return result{verdict: v, err: errors.New("scripted " + v.String())}
}

func (p *fakeProber) close() {
	p.n.mu.Lock()
	p.n.closed[p.addr]++
	p.n.mu.Unlock()
}

func testConfig() Config {
	c := Config{TCP: &TCPCheck{}}
	c.SetDefaults() // interval 5s, timeout 1s, unhealthy 3, healthy 2, no traffic 60s
	return c
}

func secs(ds ...float64) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = time.Duration(d * float64(time.Second))
	}
	return out
}

func TestCheckerSchedule(t *testing.T) {
	tests := []struct {
		name    string
		cfg     func(*Config)
		delay   time.Duration
		traffic bool
		run     time.Duration
		want    []time.Duration
	}{
		{"interval from the end of a check", nil, 0, true, 16 * time.Second, secs(0, 5, 10, 15)},
		{"slow checks push the next one", nil, 200 * time.Millisecond, true, 16 * time.Second, secs(0, 5.2, 10.4, 15.6)},
		{"timeout ends a hanging check", nil, time.Hour, true, 13 * time.Second, secs(0, 6, 12)},
		{"no traffic interval", nil, 0, false, 150 * time.Second, secs(0, 60, 120)},
		{"custom no traffic interval", func(c *Config) { c.NoTrafficInterval = 7 * time.Second }, 0, false, 15 * time.Second, secs(0, 7, 14)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				n := newFakeNet()
				n.setDelay("a", tt.delay)
				cfg := testConfig()
				if tt.cfg != nil {
					tt.cfg(&cfg)
				}
				c := newChecker(cfg, Options{Traffic: func() bool { return tt.traffic }, Seed: 1}, n.prober)
				c.SetHosts([]string{"a"})
				time.Sleep(tt.run)
				c.Close()
				if got := n.probeTimes("a"); !slices.Equal(got, tt.want) {
					t.Fatalf("probes started at %v, want %v", got, tt.want)
				}
				if n.closes("a") != 1 {
					t.Fatalf("prober closed %d times, want 1", n.closes("a"))
				}
			})
		})
	}
}

func TestCheckerTrafficStarts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet()
		var traffic atomic.Bool
		c := newChecker(testConfig(), Options{Traffic: traffic.Load, Seed: 1}, n.prober)
		defer c.Close()
		c.SetHosts([]string{"a"})
		time.Sleep(90 * time.Second) // probes at 0 and 60s
		traffic.Store(true)          // the wait armed at 60s still runs to 120s
		time.Sleep(46 * time.Second) // then 125s, 130s, 135s
		if got, want := n.probeTimes("a"), secs(0, 60, 120, 125, 130, 135); !slices.Equal(got, want) {
			t.Fatalf("probes started at %v, want %v", got, want)
		}
	})
}

func TestCheckerJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet()
		cfg := testConfig()
		cfg.InitialJitter = time.Second
		cfg.IntervalJitter = 500 * time.Millisecond
		c := newChecker(cfg, Options{Seed: 7}, n.prober)
		hosts := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
		c.SetHosts(hosts)
		time.Sleep(30 * time.Second)
		c.Close()
		firsts := map[time.Duration]bool{}
		for _, h := range hosts {
			ps := n.probeTimes(h)
			if len(ps) < 2 {
				t.Fatalf("host %s: %d probes", h, len(ps))
			}
			if ps[0] < 0 || ps[0] >= time.Second {
				t.Fatalf("host %s: first probe at %v, want within initial_jitter [0, 1s)", h, ps[0])
			}
			firsts[ps[0]] = true
			for i := 1; i < len(ps); i++ {
				if gap := ps[i] - ps[i-1]; gap < 5*time.Second || gap >= 5500*time.Millisecond {
					t.Fatalf("host %s: gap %v outside [5s, 5.5s)", h, gap)
				}
			}
		}
		if len(firsts) < len(hosts)/2 {
			t.Fatalf("first probes %v: hosts share their jitter", firsts)
		}
	})
}

// TestCheckerTransitions runs the whole loop (timer, verdicts, callbacks)
// against scripted hosts and checks health, flips and callbacks.
func TestCheckerTransitions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet()
		var changes atomic.Int32
		var mu sync.Mutex
		successes := map[string]int{}
		var c *Checker
		var atChange []Status
		c = newChecker(testConfig(), Options{
			Seed: 1,
			OnChange: func() {
				changes.Add(1)
				// The changed host's goroutine is blocked here, so its
				// state is exactly the one at the flip.
				s, _ := c.Status("a")
				mu.Lock()
				atChange = append(atChange, s)
				mu.Unlock()
			},
			OnSuccess: func(addr string) {
				mu.Lock()
				successes[addr]++
				mu.Unlock()
			},
		}, n.prober)
		defer c.Close()

		c.SetHosts([]string{"a"})
		if c.Healthy("a") {
			t.Fatal("healthy before the first check")
		}
		synctest.Wait() // first check (t=0) done
		if !c.Healthy("a") || changes.Load() != 1 {
			t.Fatalf("after first pass: healthy=%v changes=%d", c.Healthy("a"), changes.Load())
		}

		n.set("a", failCounted)
		time.Sleep(10*time.Second + time.Millisecond) // checks at 5s, 10s fail
		synctest.Wait()
		if !c.Healthy("a") {
			t.Fatal("unhealthy after 2 of 3 failures")
		}
		time.Sleep(5 * time.Second) // 15s: third failure
		synctest.Wait()
		if c.Healthy("a") || changes.Load() != 2 {
			t.Fatalf("after 3 failures: healthy=%v changes=%d", c.Healthy("a"), changes.Load())
		}
		s, _ := c.Status("a")
		if s.ConsecutiveFailures != 3 || s.Failures != 3 || s.Attempts != 4 || !strings.Contains(s.LastError, "scripted fail") {
			t.Fatalf("status %+v", s)
		}

		n.set("a", pass)
		time.Sleep(5 * time.Second) // 20s: one pass, not enough
		synctest.Wait()
		if c.Healthy("a") {
			t.Fatal("healthy after 1 of 2 passes")
		}
		time.Sleep(5 * time.Second) // 25s
		synctest.Wait()
		if !c.Healthy("a") || changes.Load() != 3 {
			t.Fatalf("after 2 passes: healthy=%v changes=%d", c.Healthy("a"), changes.Load())
		}

		n.set("a", failImmediate)
		time.Sleep(5 * time.Second) // 30s
		synctest.Wait()
		if c.Healthy("a") || changes.Load() != 4 {
			t.Fatalf("after immediate failure: healthy=%v changes=%d", c.Healthy("a"), changes.Load())
		}
		mu.Lock()
		defer mu.Unlock()
		if successes["a"] != 3 {
			t.Fatalf("OnSuccess called %d times, want 3", successes["a"])
		}
		want := []struct {
			healthy   bool
			succ, fai uint32
		}{{true, 1, 0}, {false, 0, 3}, {true, 2, 0}, {false, 0, 1}}
		if len(atChange) != len(want) {
			t.Fatalf("%d changes recorded, want %d", len(atChange), len(want))
		}
		for i, w := range want {
			g := atChange[i]
			if g.Healthy != w.healthy || g.ConsecutiveSuccesses != w.succ || g.ConsecutiveFailures != w.fai {
				t.Errorf("change %d: %+v, want healthy=%v successes=%d failures=%d", i, g, w.healthy, w.succ, w.fai)
			}
		}
	})
}

func TestCheckerTimeoutError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet()
		n.setDelay("a", time.Hour)
		c := newChecker(testConfig(), Options{Seed: 1}, n.prober)
		defer c.Close()
		c.SetHosts([]string{"a"})
		time.Sleep(time.Second + time.Millisecond)
		synctest.Wait()
		s, ok := c.Status("a")
		if !ok || s.Pending || s.Healthy || s.Attempts != 1 {
			t.Fatalf("status %+v", s)
		}
		if !strings.Contains(s.LastError, ErrTimeout.Error()+" after 1s") {
			t.Fatalf("last error %q, want a timeout", s.LastError)
		}
	})
}

func TestCheckerSetHosts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet()
		c := newChecker(testConfig(), Options{Seed: 1}, n.prober)
		c.SetHosts([]string{"a", "b", "a"})
		time.Sleep(10*time.Second + time.Millisecond) // 3 checks each
		synctest.Wait()
		if st := c.Statuses(); len(st) != 2 || st[0].Address != "a" || st[1].Address != "b" || st[0].Attempts != 3 {
			t.Fatalf("statuses %+v", st)
		}

		// b stays and keeps its state, a goes, c comes.
		n.set("c", failCounted)
		c.SetHosts([]string{"c", "b"})
		synctest.Wait()
		if _, ok := c.Status("a"); ok || c.Healthy("a") {
			t.Fatal("a still known after removal")
		}
		if n.closes("a") != 1 {
			t.Fatal("a's prober not closed on removal")
		}
		sb, _ := c.Status("b")
		if !sb.Healthy || sb.Attempts != 3 {
			t.Fatalf("b lost its state: %+v", sb)
		}
		sc, _ := c.Status("c")
		if sc.Healthy || sc.Pending || sc.Attempts != 1 {
			t.Fatalf("c: %+v", sc)
		}

		// a comes back as a new host: pending, with no history.
		n.setDelay("a", 500*time.Millisecond)
		c.SetHosts([]string{"a", "b", "c"})
		sa, _ := c.Status("a")
		if !sa.Pending || sa.Attempts != 0 || c.Healthy("a") {
			t.Fatalf("re-added a: %+v", sa)
		}
		time.Sleep(600 * time.Millisecond)
		if !c.Healthy("a") {
			t.Fatal("re-added a not healthy after its first pass")
		}
		aBefore := len(n.probeTimes("a"))

		c.Close()
		c.Close() // idempotent
		for _, h := range []string{"a", "b", "c"} {
			if c.Healthy(h) {
				t.Fatalf("%s healthy after Close", h)
			}
		}
		c.SetHosts([]string{"d"})
		time.Sleep(time.Minute)
		if len(n.probeTimes("d")) != 0 || len(n.probeTimes("a")) != aBefore {
			t.Fatal("checks ran after Close")
		}
		if n.closes("a") != 2 || n.closes("b") != 1 || n.closes("c") != 1 {
			t.Fatalf("closes a=%d b=%d c=%d", n.closes("a"), n.closes("b"), n.closes("c"))
		}
	})
}

// TestCheckerOnChangeSerial: with many hosts flipping at the same instant,
// OnChange never runs twice at once.
func TestCheckerOnChangeSerial(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newFakeNet()
		var inside, maxInside, calls atomic.Int32
		c := newChecker(testConfig(), Options{Seed: 1, OnChange: func() {
			v := inside.Add(1)
			if v > maxInside.Load() {
				maxInside.Store(v)
			}
			// Hold it a while, so that overlaps would show. (Not a sleep:
			// goroutines waiting on a mutex keep a synctest bubble's
			// clock from advancing.)
			for range 100 {
				runtime.Gosched()
			}
			inside.Add(-1)
			calls.Add(1)
		}}, n.prober)
		defer c.Close()
		hosts := []string{"a", "b", "c", "d", "e"}
		c.SetHosts(hosts)
		time.Sleep(time.Second)
		if calls.Load() != int32(len(hosts)) || maxInside.Load() != 1 {
			t.Fatalf("calls=%d max concurrent=%d", calls.Load(), maxInside.Load())
		}
	})
}
