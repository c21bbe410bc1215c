package health

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// TestStateMachine drives the threshold machine through verdict sequences
// and checks health and flips after every step. "P" pass, "F" counted
// failure, "X" immediate failure; "H"/"U" healthy/unhealthy after the step,
// "*" marks a flip.
func TestStateMachine(t *testing.T) {
	tests := []struct {
		name               string
		healthy, unhealthy uint32
		verdicts           string
		want               string // one H/U per step, * after a flip
	}{
		{"first pass is enough", 2, 3, "P", "H*"},
		{"first fail keeps unhealthy", 2, 3, "FPP", "U U H*"},
		{"first immediate fail", 2, 3, "XPP", "U U H*"},
		{"exact unhealthy threshold", 2, 3, "PFFF", "H* H H U*"},
		{"pass resets failure run", 2, 3, "PFFPFFF", "H* H H H H H U*"},
		{"immediate failure ignores threshold", 2, 3, "PX", "H* U*"},
		{"immediate after counted", 2, 3, "PFX", "H* H U*"},
		{"exact healthy threshold", 2, 3, "PXPP", "H* U* U H*"},
		{"failure resets pass run", 3, 3, "PXPPFPPP", "H* U* U U U U U H*"},
		{"threshold one both ways", 1, 1, "PFPFP", "H* U* H* U* H*"},
		{"large thresholds", 4, 5, "PFFFFFPPPP", "H* H H H H U* U U U H*"},
		{"failures while unhealthy do not flip", 2, 2, "PFFFFX", "H* H U* U U U"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s state
			if s.healthy || s.checked {
				t.Fatal("zero state must be unhealthy and unchecked")
			}
			var got []string
			for _, c := range tt.verdicts {
				v := map[rune]verdict{'P': pass, 'F': failCounted, 'X': failImmediate}[c]
				var changed bool
				before := s
				s, changed = s.next(v, tt.healthy, tt.unhealthy)
				step := "U"
				if s.healthy {
					step = "H"
				}
				if changed {
					step += "*"
				}
				if changed != (before.healthy != s.healthy) {
					t.Fatalf("changed=%v but healthy %v -> %v", changed, before.healthy, s.healthy)
				}
				got = append(got, step)
				if !s.checked {
					t.Fatal("checked not set")
				}
				if v == pass && (s.failures != 0 || s.successes != before.successes+1) {
					t.Fatalf("after pass: %+v from %+v", s, before)
				}
				if v != pass && (s.successes != 0 || s.failures != before.failures+1) {
					t.Fatalf("after fail: %+v from %+v", s, before)
				}
			}
			if g := strings.Join(got, " "); g != tt.want {
				t.Fatalf("verdicts %s: got %q want %q", tt.verdicts, g, tt.want)
			}
		})
	}
}

func TestWaitFor(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		traffic  bool
		min, max time.Duration // inclusive min, exclusive max (min==max: exact)
		cover    float64       // the draws must reach this close to both ends (share of the span)
	}{
		{"interval", Config{Interval: 5 * time.Second, NoTrafficInterval: time.Minute}, true, 5 * time.Second, 5 * time.Second, 0.01},
		{"no traffic", Config{Interval: 5 * time.Second, NoTrafficInterval: time.Minute}, false, time.Minute, time.Minute, 0.01},
		{"jitter", Config{Interval: time.Second, NoTrafficInterval: time.Minute, IntervalJitter: 100 * time.Millisecond}, true, time.Second, 1100 * time.Millisecond, 0.01},
		{"percent", Config{Interval: time.Second, NoTrafficInterval: time.Minute, IntervalJitterPercent: 50}, true, time.Second, 1500 * time.Millisecond, 0.01},
		{"percent of no traffic", Config{Interval: time.Second, NoTrafficInterval: 10 * time.Second, IntervalJitterPercent: 10}, false, 10 * time.Second, 11 * time.Second, 0.01},
		{"both", Config{Interval: time.Second, NoTrafficInterval: time.Minute, IntervalJitter: time.Second, IntervalJitterPercent: 100}, true, time.Second, 3 * time.Second, 0.05},
		{"floor", Config{Interval: time.Nanosecond, NoTrafficInterval: time.Minute}, true, time.Millisecond, time.Millisecond, 0.01},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(1, 2))
			lo, hi := time.Duration(1<<62), time.Duration(0)
			for range 2000 {
				d := waitFor(&tt.cfg, tt.traffic, rnd)
				lo, hi = min(lo, d), max(hi, d)
			}
			if tt.min == tt.max {
				if lo != tt.min || hi != tt.min {
					t.Fatalf("range [%v, %v], want exactly %v", lo, hi, tt.min)
				}
				return
			}
			if lo < tt.min || hi >= tt.max {
				t.Fatalf("range [%v, %v] outside [%v, %v)", lo, hi, tt.min, tt.max)
			}
			// One uniform jitter: 2000 draws reach within 1% of each end
			// with probability 1 - 2·0.99^2000 ≈ 1 - 4e-9. The sum of two
			// (case "both") is triangular: a draw lands in the outer 5% of
			// the span with probability 2·0.1²/2 = 0.01, so missing an end
			// has probability 0.99^2000 ≈ 2e-9.
			margin := time.Duration(float64(tt.max-tt.min) * tt.cover)
			if lo > tt.min+margin || hi < tt.max-margin {
				t.Fatalf("range [%v, %v] does not cover [%v, %v)", lo, hi, tt.min, tt.max)
			}
		})
	}
}

func TestInitialWait(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	if d := initialWait(&Config{}, rnd); d != 0 {
		t.Fatalf("no initial_jitter: waited %v", d)
	}
	c := Config{InitialJitter: time.Second}
	var sum time.Duration
	const n = 4000
	for range n {
		d := initialWait(&c, rnd)
		if d < 0 || d >= time.Second {
			t.Fatalf("initial wait %v outside [0, 1s)", d)
		}
		sum += d
	}
	// Mean of U[0,1s) is 500ms, stdev of the mean 289ms/sqrt(4000) ≈ 4.6ms;
	// ±25ms is more than 5 sigma.
	if mean := sum / n; mean < 475*time.Millisecond || mean > 525*time.Millisecond {
		t.Fatalf("mean initial wait %v, want about 500ms", mean)
	}
}
