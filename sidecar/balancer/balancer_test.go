package balancer

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// endpoints returns endpoints 10.0.0.<i>:8080 with the given weights.
func endpoints(weights ...uint32) []Endpoint {
	eps := make([]Endpoint, len(weights))
	for i, w := range weights {
		eps[i] = Endpoint{Address: fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1), Weight: w}
	}
	return eps
}

// pcg returns a deterministic random source for single-threaded tests.
func pcg(seed uint64) func() uint64 {
	return rand.New(rand.NewPCG(seed, seed^0x5eed)).Uint64
}

func mustNew(t testing.TB, policy string, cfg Config, eps []Endpoint, seed uint64, rnd func() uint64) Picker {
	t.Helper()
	p, err := NewWithRand(policy, cfg, eps, seed, rnd)
	if err != nil {
		t.Fatalf("NewWithRand(%s): %v", policy, err)
	}
	return p
}

// countPicks picks n times and counts per endpoint, failing on an index out
// of range.
func countPicks(t testing.TB, p Picker, numEps, n int, info func(int) *PickInfo) []int {
	t.Helper()
	counts := make([]int, numEps)
	for k := range n {
		i := p.Pick(info(k))
		if i < 0 || i >= numEps {
			t.Fatalf("Pick() = %d, want 0..%d", i, numEps-1)
		}
		counts[i]++
	}
	return counts
}

func noHash(int) *PickInfo { return &PickInfo{} }

// randomHashes gives pick k a well-mixed hash.
func randomHashes(k int) *PickInfo {
	return &PickInfo{Hash: splitmix64(uint64(k)), HasHash: true}
}

func shares(weights []uint32) []float64 {
	var total float64
	for _, w := range weights {
		total += float64(w)
	}
	p := make([]float64, len(weights))
	for i, w := range weights {
		p[i] = float64(w) / total
	}
	return p
}

// chiSquare is Pearson's statistic of counts against probabilities p over
// the cells expecting at least 5 (the usual validity rule), and its degrees
// of freedom.
func chiSquare(counts []int, p []float64) (x float64, df int) {
	var n float64
	for _, c := range counts {
		n += float64(c)
	}
	for i, c := range counts {
		e := n * p[i]
		if e < 5 {
			continue
		}
		x += (float64(c) - e) * (float64(c) - e) / e
		df++
	}
	return x, df - 1
}

// chiSquareCritical is the chi-square value exceeded with probability 0.001
// at df degrees of freedom (Wilson–Hilferty approximation; within 1% of the
// table values for df >= 2; 10.83 for df 1).
func chiSquareCritical(df int) float64 {
	if df == 1 {
		return 10.83
	}
	const z = 3.090 // standard normal quantile at 0.999
	d := float64(df)
	a := 2 / (9 * d)
	return d * math.Pow(1-a+z*math.Sqrt(a), 3)
}

// assertShares checks counts against probabilities p: chi-square at the
// 0.001 level and every share within tolPP percentage points.
func assertShares(t *testing.T, counts []int, p []float64, tolPP float64) {
	t.Helper()
	var n float64
	for _, c := range counts {
		n += float64(c)
	}
	if x, df := chiSquare(counts, p); df > 0 && x > chiSquareCritical(df) {
		t.Errorf("chi-square %.1f > %.1f (p=0.001, df=%d): counts %v, want shares %v", x, chiSquareCritical(df), df, counts, p)
	}
	for i, c := range counts {
		if d := 100 * math.Abs(float64(c)/n-p[i]); d > tolPP {
			t.Errorf("endpoint %d: share %.2f%%, want %.2f%% ± %.1fpp", i, 100*float64(c)/n, 100*p[i], tolPP)
		}
	}
}

func TestEmptyAndSingle(t *testing.T) {
	infos := []*PickInfo{nil, {}, {Hash: 12345, HasHash: true}}
	for _, policy := range Policies() {
		t.Run(policy, func(t *testing.T) {
			empty, err := New(policy, Config{}, nil, 1)
			if err != nil {
				t.Fatal(err)
			}
			single, err := New(policy, Config{}, endpoints(7), 1)
			if err != nil {
				t.Fatal(err)
			}
			for _, info := range infos {
				for range 100 {
					if got := empty.Pick(info); got != -1 {
						t.Fatalf("empty.Pick(%+v) = %d, want -1", info, got)
					}
					if got := single.Pick(info); got != 0 {
						t.Fatalf("single.Pick(%+v) = %d, want 0", info, got)
					}
				}
			}
		})
	}
}

// TestShares checks that every policy gives P_i = W_i/ΣW: exactly in
// expectation for the random ones (chi-square at p=0.001 over 100k picks
// with a fixed seed), and to the ring's and table's resolution for hashed
// picks.
func TestShares(t *testing.T) {
	hundred := make([]uint32, 100)
	for i := range hundred {
		hundred[i] = uint32(i%10 + 1)
	}
	weightSets := []struct {
		name    string
		weights []uint32
	}{
		{"1:3:6", []uint32{1, 3, 6}},
		{"equal", []uint32{5, 5, 5, 5}},
		{"1:100", []uint32{1, 100}},
		{"zero weight counts as 1", []uint32{0, 1, 2}},
		{"100 endpoints", hundred},
	}
	cases := []struct {
		policy string
		info   func(int) *PickInfo
		tolPP  float64
		chi    bool // whether the share is exact in expectation
	}{
		{WeightedRandom, noHash, 1, true},
		{RoundRobin, noHash, 0.1, true},
		{LeastRequest, noHash, 1, true},
		{RingHash, noHash, 1, true},
		{Maglev, noHash, 1, true},
		// A ring of ~1030 points: an endpoint owning c points owns a share
		// with standard deviation about share/sqrt(c) (1pp for 103 points
		// at 10%); 4pp is four of those.
		{RingHash, randomHashes, 4, false},
		// The Maglev table is filled in proportion to weight to within a
		// round: its shares are exact to about n/65537.
		{Maglev, randomHashes, 1, false},
	}
	for _, ws := range weightSets {
		for _, c := range cases {
			name := c.policy + "/" + ws.name
			if c.info(0).HasHash {
				name += "/hashed"
			}
			t.Run(name, func(t *testing.T) {
				eps := endpoints(ws.weights...)
				p := mustNew(t, c.policy, Config{}, eps, 42, pcg(42))
				counts := countPicks(t, p, len(eps), 100_000, c.info)
				weights := append([]uint32(nil), ws.weights...)
				for i := range weights {
					weights[i] = max(weights[i], 1)
				}
				want := shares(weights)
				if c.chi {
					assertShares(t, counts, want, c.tolPP)
					return
				}
				for i, n := range counts {
					if d := 100 * math.Abs(float64(n)/100_000-want[i]); d > c.tolPP {
						t.Errorf("endpoint %d: share %.2f%%, want %.2f%% ± %.1fpp", i, float64(n)/1000, 100*want[i], c.tolPP)
					}
				}
			})
		}
	}
}

// TestWeightChange rebuilds the picker with new weights, as a cluster does,
// and checks that the shares follow.
func TestWeightChange(t *testing.T) {
	for _, policy := range Policies() {
		t.Run(policy, func(t *testing.T) {
			eps := endpoints(1, 1, 1)
			p := mustNew(t, policy, Config{}, eps, 7, pcg(7))
			assertShares(t, countPicks(t, p, 3, 30_000, noHash), shares([]uint32{1, 1, 1}), 1.5)

			eps[2].Weight = 8
			p = mustNew(t, policy, Config{}, eps, 7, pcg(8))
			assertShares(t, countPicks(t, p, 3, 30_000, noHash), shares([]uint32{1, 1, 8}), 1.5)
		})
	}
}

// TestEndpointsCopied checks that a picker does not keep the caller's
// slice: editing it after New changes nothing.
func TestEndpointsCopied(t *testing.T) {
	for _, policy := range Policies() {
		t.Run(policy, func(t *testing.T) {
			eps := endpoints(1, 2)
			edited := mustNew(t, policy, Config{}, eps, 3, pcg(3))
			eps[0], eps[1] = Endpoint{Address: "x", Weight: 1000}, Endpoint{Address: "y", Weight: 1}
			fresh := mustNew(t, policy, Config{}, endpoints(1, 2), 3, pcg(3))
			for k := range 1000 {
				info := randomHashes(k)
				info.HasHash = k%2 == 0
				if a, b := edited.Pick(info), fresh.Pick(info); a != b {
					t.Fatalf("pick %d: picker whose input was edited answers %d, a fresh one %d", k, a, b)
				}
			}
		})
	}
}

// TestPickAllocs asserts that Pick allocates nothing, for every policy, with
// equal and unequal weights, with and without a hash, on the default random
// source.
func TestPickAllocs(t *testing.T) {
	withActive := func(eps []Endpoint) []Endpoint {
		for i := range eps {
			eps[i].Active = new(atomic.Int64)
			eps[i].Active.Store(int64(i))
		}
		return eps
	}
	cfgBias := Config{LeastRequest: LeastRequestConfig{ActiveRequestBias: ptr(1.5), ChoiceCount: 3}}
	for _, policy := range Policies() {
		for _, tc := range []struct {
			name string
			cfg  Config
			eps  []Endpoint
		}{
			{"equal", Config{}, withActive(endpoints(1, 1, 1))},
			{"unequal", Config{}, withActive(endpoints(1, 3, 6))},
			{"unequal-bias1.5", cfgBias, withActive(endpoints(1, 3, 6))},
		} {
			t.Run(policy+"/"+tc.name, func(t *testing.T) {
				p, err := New(policy, tc.cfg, tc.eps, 1)
				if err != nil {
					t.Fatal(err)
				}
				info := &PickInfo{}
				hashed := &PickInfo{HasHash: true}
				if a := testing.AllocsPerRun(1000, func() {
					p.Pick(nil)
					p.Pick(info)
					hashed.Hash += 0x9e3779b97f4a7c15
					p.Pick(hashed)
				}); a != 0 {
					t.Errorf("Pick allocates %v times per run, want 0", a)
				}
			})
		}
	}
}

// TestConcurrentPicks picks from many goroutines while counting requests in
// and out on the shared Active counters, as the proxy does. Run with -race.
func TestConcurrentPicks(t *testing.T) {
	const goroutines, picks = 8, 5000
	for _, policy := range Policies() {
		t.Run(policy, func(t *testing.T) {
			eps := endpoints(1, 2, 3, 4, 5)
			for i := range eps {
				eps[i].Active = new(atomic.Int64)
			}
			p, err := New(policy, Config{}, eps, 99)
			if err != nil {
				t.Fatal(err)
			}
			var total [5]atomic.Int64
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Go(func() {
					info := &PickInfo{Hash: uint64(g), HasHash: g%2 == 0}
					for k := range picks {
						info.Hash = splitmix64(info.Hash + uint64(k))
						i := p.Pick(info)
						if i < 0 || i >= len(eps) {
							t.Errorf("Pick() = %d", i)
							return
						}
						eps[i].Active.Add(1)
						total[i].Add(1)
						eps[i].Active.Add(-1)
					}
				})
			}
			wg.Wait()
			var sum int64
			for i := range total {
				sum += total[i].Load()
				if a := eps[i].Active.Load(); a != 0 {
					t.Errorf("endpoint %d: Active = %d after all requests finished", i, a)
				}
			}
			if sum != goroutines*picks {
				t.Errorf("counted %d picks, want %d", sum, goroutines*picks)
			}
		})
	}
}
