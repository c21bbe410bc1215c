package balancer

import (
	"math"
	"slices"
	"sync/atomic"
	"testing"
)

// lrModel computes the exact pick probabilities of the documented
// least_request rule, independently of the picker: the first candidate is
// drawn with probability p_i; each further candidate is drawn again while it
// equals the current best, up to lrRedraws times; it replaces the best if its
// key is strictly smaller. It tracks the distribution of the best.
func lrModel(weights []uint32, key []float64, choices int) []float64 {
	p := shares(weights)
	best := slices.Clone(p)
	for range choices - 1 {
		next := make([]float64, len(p))
		for b, pb := range best {
			if pb == 0 {
				continue
			}
			stay := math.Pow(p[b], lrRedraws+1) // every redraw repeated b
			next[b] += pb * stay
			geom := (1 - stay) / (1 - p[b]) // Σ_{m=0..lrRedraws} p_b^m
			for j, pj := range p {
				if j == b {
					continue
				}
				if key[j] < key[b] {
					next[j] += pb * pj * geom
				} else {
					next[b] += pb * pj * geom
				}
			}
		}
		best = next
	}
	return best
}

// TestLRModel pins the model to hand-derived numbers.
func TestLRModel(t *testing.T) {
	q9 := math.Pow(1.0/3, 9)
	for _, tc := range []struct {
		name string
		got  []float64
		want []float64
	}{
		// Equal weights, loads 10, 0, 5: endpoint 1 wins when drawn at
		// all, endpoint 0 only when every draw was 0.
		{"P2C", lrModel([]uint32{1, 1, 1}, []float64{10, 0, 5}, 2),
			[]float64{q9 / 3, (2 - q9) / 3, 1.0 / 3}},
		{"idle", lrModel([]uint32{1, 3, 6}, []float64{0, 0, 0}, 2), []float64{0.1, 0.3, 0.6}},
	} {
		for i := range tc.want {
			if math.Abs(tc.got[i]-tc.want[i]) > 1e-12 {
				t.Errorf("%s: model %v, want %v", tc.name, tc.got, tc.want)
				break
			}
		}
	}
}

// TestLeastRequestPrefersLessLoaded sets Active counters and checks the pick
// probabilities against lrModel (chi-square at p=0.001 over 100k picks).
func TestLeastRequestPrefersLessLoaded(t *testing.T) {
	tests := []struct {
		name    string
		weights []uint32
		active  []int64 // -1: nil counter
		choices uint32
		bias    *float64
		key     []float64 // what the rule compares (nil: ignores load)
		want    []float64 // approximate shares, for the reader
	}{
		{
			name:    "equal weights, P2C",
			weights: []uint32{1, 1, 1}, active: []int64{10, 0, 5},
			key: []float64{10, 0, 5}, want: []float64{0, 0.67, 0.33},
		},
		{
			name:    "equal weights, three choices",
			weights: []uint32{1, 1, 1}, active: []int64{10, 0, 5}, choices: 3,
			key: []float64{10, 0, 5}, want: []float64{0, 0.83, 0.17},
		},
		{
			name:    "equal weights, bias does not apply",
			weights: []uint32{2, 2, 2}, active: []int64{10, 0, 5}, bias: ptr(0.0),
			key: []float64{10, 0, 5}, want: []float64{0, 0.67, 0.33},
		},
		{
			name:    "nil Active counts as idle",
			weights: []uint32{1, 1}, active: []int64{-1, 4},
			key: []float64{0, 4}, want: []float64{1, 0},
		},
		{
			// Load per weight 0, 1, 2.
			name:    "unequal weights, loads ordered",
			weights: []uint32{1, 3, 6}, active: []int64{0, 3, 12},
			key: []float64{0, 1, 2}, want: []float64{0.29, 0.70, 0.01},
		},
		{
			name:    "unequal weights, idle",
			weights: []uint32{1, 3, 6}, active: []int64{0, 0, 0},
			key: []float64{0, 0, 0}, want: []float64{0.1, 0.3, 0.6},
		},
		{
			name:    "unequal weights, load proportional to weight",
			weights: []uint32{1, 3, 6}, active: []int64{2, 6, 12},
			key: []float64{2, 2, 2}, want: []float64{0.1, 0.3, 0.6},
		},
		{
			name:    "unequal weights, bias 0 ignores load",
			weights: []uint32{1, 3, 6}, active: []int64{0, 3, 12}, bias: ptr(0.0),
			want: []float64{0.1, 0.3, 0.6},
		},
		{
			// Loads 1/1 vs 3/4: the heavier endpoint is less loaded per
			// unit of weight.
			name:    "unequal weights, bias 1",
			weights: []uint32{1, 4}, active: []int64{1, 3},
			key: []float64{1, 0.75}, want: []float64{0, 1},
		},
		{
			// Loads 1²/1 vs 3²/4: active requests now outweigh weight.
			name:    "unequal weights, bias 2",
			weights: []uint32{1, 4}, active: []int64{1, 3}, bias: ptr(2.0),
			key: []float64{1, 2.25}, want: []float64{0.89, 0.11},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eps := endpoints(tt.weights...)
			for i, a := range tt.active {
				if a >= 0 {
					eps[i].Active = new(atomic.Int64)
					eps[i].Active.Store(a)
				}
			}
			cfg := Config{LeastRequest: LeastRequestConfig{ChoiceCount: tt.choices, ActiveRequestBias: tt.bias}}
			p := mustNew(t, LeastRequest, cfg, eps, 0, pcg(11))
			want := shares(tt.weights)
			if tt.key != nil {
				want = lrModel(tt.weights, tt.key, int(max(tt.choices, 2)))
			}
			for i := range want {
				if math.Abs(want[i]-tt.want[i]) > 0.01 {
					t.Fatalf("model gives %v, the case says about %v", want, tt.want)
				}
			}
			assertShares(t, countPicks(t, p, len(eps), 100_000, noHash), want, 1)
		})
	}
}

// TestLeastRequestDrains runs a closed loop: requests are counted in at the
// pick and finished in FIFO order, so a slow endpoint (one that finishes
// nothing) accumulates load and must stop receiving new requests.
func TestLeastRequestDrains(t *testing.T) {
	for _, weights := range [][]uint32{{1, 1, 1, 1}, {1, 2, 3, 4}} {
		eps := endpoints(weights...)
		for i := range eps {
			eps[i].Active = new(atomic.Int64)
		}
		p := mustNew(t, LeastRequest, Config{}, eps, 0, pcg(5))
		const stuck = 3 // never completes a request
		var inflight []int
		counts := make([]int, len(eps))
		for k := range 20_000 {
			i := p.Pick(nil)
			eps[i].Active.Add(1)
			inflight = append(inflight, i)
			if k >= 20_000-10_000 {
				counts[i]++
			}
			// Keep about 20 requests in flight on the healthy endpoints.
			for len(inflight) > 20 {
				j := inflight[0]
				inflight = inflight[1:]
				if j == stuck {
					continue // its requests stay active
				}
				eps[j].Active.Add(-1)
			}
		}
		// Once the stuck endpoint holds more than its fair load it only
		// wins when it is every candidate: (W/ΣW)^(2+lrRedraws) of picks.
		frac := float64(counts[stuck]) / 10_000
		w := shares(weights)[stuck]
		if limit := math.Pow(w, 2+lrRedraws) + 0.005; frac > limit {
			t.Errorf("weights %v: stuck endpoint still gets %.1f%% of picks, want <= %.1f%%", weights, 100*frac, 100*limit)
		}
		t.Logf("weights %v: stuck endpoint holds %d requests, got %.2f%% of the last 10k picks", weights, eps[stuck].Active.Load(), 100*frac)
	}
}
