package balancer

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// cycleLen is ΣW / gcd(W): the length of one round_robin cycle.
func cycleLen(weights []uint32) (int, []uint64) {
	w := make([]uint64, len(weights))
	for i, x := range weights {
		w[i] = uint64(max(x, 1))
	}
	divideByGCD(w)
	var total uint64
	for _, x := range w {
		total += x
	}
	return int(total), w
}

func TestRoundRobinExactOverEachCycle(t *testing.T) {
	tests := []struct {
		name    string
		weights []uint32
	}{
		{"1:3:6", []uint32{1, 3, 6}},
		{"equal", []uint32{4, 4, 4}},
		{"gcd reduced", []uint32{10, 30, 60}},
		{"coprime", []uint32{7, 11, 13, 1, 1, 1, 1}},
		{"one heavy", []uint32{100, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{"two", []uint32{2, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, want := cycleLen(tt.weights)
			for seed := range uint64(5) {
				p := mustNew(t, RoundRobin, Config{}, endpoints(tt.weights...), seed, nil)
				// Three consecutive cycles from wherever the seed started.
				for cycle := range 3 {
					counts := countPicks(t, p, len(tt.weights), n, noHash)
					for i, c := range counts {
						if uint64(c) != want[i] {
							t.Fatalf("seed %d cycle %d: counts %v, want %v", seed, cycle, counts, want)
						}
					}
				}
			}
		})
	}
}

// TestRoundRobinSmooth checks that picks interleave: after any number t of
// picks from the start of the schedule, each endpoint has had within two
// picks of its ideal t·W_i/ΣW (so never runs of W_i picks in a row). The
// bound is empirical, not a theorem: for divisor-method sequences the worst
// deviation grows slowly with n; over 5000 random sets of up to 100 weights
// the worst seen was 1.86, and 1.07 over the sets below.
func TestRoundRobinSmooth(t *testing.T) {
	sets := [][]uint64{{1, 3, 6}, {5, 1, 1}, {1, 2, 3, 4, 5}, {7, 11, 13, 1, 1, 1, 1}, {100, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		w := make([]uint64, 2+r.IntN(40))
		for i := range w {
			w[i] = 1 + r.Uint64N(uint64(1+r.IntN(64)))
		}
		sets = append(sets, w)
	}
	for _, w := range sets {
		w = reduce(w)
		if allEqual(w) {
			continue
		}
		sched := edfSchedule(w)
		var total float64
		for _, x := range w {
			total += float64(x)
		}
		counts := make([]float64, len(w))
		for t0, i := range sched {
			counts[i]++
			for j := range w {
				if d := math.Abs(counts[j] - float64(t0+1)*float64(w[j])/total); d > 2 {
					t.Fatalf("weights %v: after %d picks endpoint %d has %v, ideal %.2f", w, t0+1, j, counts[j], float64(t0+1)*float64(w[j])/total)
				}
			}
		}
	}
	// The schedule for 1:3:6 spells out what "smooth" means here.
	if got, want := fmt.Sprint(edfSchedule([]uint64{1, 3, 6})), "[2 1 2 2 0 1 2 2 1 2]"; got != want {
		t.Errorf("schedule for 1:3:6 = %s, want %s", got, want)
	}
}

// TestRoundRobinStartOffset checks that instances built with different seeds
// start at different places in the schedule (a fleet does not move in
// lockstep), and that the same seed gives the same start.
func TestRoundRobinStartOffset(t *testing.T) {
	eps := endpoints(1, 2, 3, 4, 5, 6, 7, 8, 9, 10) // cycle of 55
	first := func(seed uint64) string {
		p := mustNew(t, RoundRobin, Config{}, eps, seed, nil)
		return fmt.Sprint(countPicks(t, p, len(eps), 7, noHash))
	}
	starts := map[string]bool{}
	for seed := range uint64(32) {
		starts[first(seed)] = true
		if a, b := first(seed), first(seed); a != b {
			t.Fatalf("seed %d: two pickers start differently: %s, %s", seed, a, b)
		}
	}
	// 32 random offsets into 55 positions collide a fair amount, but far
	// fewer than 16 distinct starts would mean the seed is (mostly) ignored.
	if len(starts) < 16 {
		t.Errorf("32 seeds gave only %d distinct starts", len(starts))
	}
}

// TestRoundRobinLargeWeights checks the bounded schedule: weights whose sum
// exceeds MaxSchedule are scaled, and shares stay within the documented
// limit.
func TestRoundRobinLargeWeights(t *testing.T) {
	weights := []uint32{1 << 24, 1<<24 - 1, 3 << 20, 1}
	p := mustNew(t, RoundRobin, Config{}, endpoints(weights...), 1, nil).(*roundRobinPicker)
	if p.n > MaxSchedule+uint64(len(weights)) {
		t.Fatalf("schedule length %d > MaxSchedule+n", p.n)
	}
	counts := countPicks(t, p, len(weights), int(p.n), noHash)
	want := shares(weights)
	for i, c := range counts {
		if c == 0 {
			t.Errorf("endpoint %d never picked in a cycle", i)
		}
		// Half a slot of rounding, or the 1-slot minimum.
		tol := math.Max(0.5, 1-want[i]*float64(p.n)) / float64(p.n)
		if d := math.Abs(float64(c)/float64(p.n) - want[i]); d > tol+1e-12 {
			t.Errorf("endpoint %d: share %.7f, want %.7f ± %.7f", i, float64(c)/float64(p.n), want[i], tol)
		}
	}
}
