package balancer

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/cespare/xxhash/v2"
)

func TestRingHashSize(t *testing.T) {
	tests := []struct {
		name       string
		cfg        RingHashConfig
		weights    []uint32
		wantCounts []int
	}{
		// Envoy: scale = ceil(min_p · min_ring) / min_p.
		{"equal", RingHashConfig{}, []uint32{1, 1, 1}, []int{342, 342, 342}},
		{"1:3:6", RingHashConfig{}, []uint32{1, 3, 6}, []int{103, 309, 618}},
		{"min ring grows", RingHashConfig{MinimumRingSize: 4096}, []uint32{1, 1}, []int{2048, 2048}},
		// scale = min(1001, 256): the light endpoint still gets one point.
		{"clamped to max", RingHashConfig{MinimumRingSize: 64, MaximumRingSize: 256}, []uint32{1, 1000}, []int{1, 256}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{RingHash: tt.cfg}
			p := mustNew(t, RingHash, cfg, endpoints(tt.weights...), 0, nil).(*ringHashPicker)
			got := make([]int, len(tt.weights))
			for _, o := range p.owners {
				got[o]++
			}
			if !slices.Equal(got, tt.wantCounts) {
				t.Errorf("points per endpoint = %v, want %v", got, tt.wantCounts)
			}
			if !slices.IsSorted(p.hashes) {
				t.Error("ring not sorted")
			}
		})
	}
}

// TestRingHashPoints checks the ring's keys ("<address>_<k>", xxHash64 seed
// 0, as Envoy) and the lookup: a hash goes to the first point at or after
// it, wrapping.
func TestRingHashPoints(t *testing.T) {
	eps := endpoints(1, 1)
	p := mustNew(t, RingHash, Config{}, eps, 0, nil).(*ringHashPicker)
	for i, ep := range eps {
		for _, k := range []string{"0", "1", "511"} {
			h := xxhash.Sum64String(ep.Address + "_" + k)
			if got := p.Pick(&PickInfo{Hash: h, HasHash: true}); got != i {
				t.Errorf("point %s_%s: Pick = %d, want %d", ep.Address, k, got, i)
			}
		}
	}
	last := len(p.hashes) - 1
	for _, tc := range []struct {
		hash uint64
		want int
	}{
		{0, int(p.owners[0])},
		{p.hashes[0] + 1, int(p.owners[1])},
		{p.hashes[last] + 1, int(p.owners[0])}, // wraps
		{math.MaxUint64, int(p.owners[0])},
	} {
		if got := p.Pick(&PickInfo{Hash: tc.hash, HasHash: true}); got != tc.want {
			t.Errorf("Pick(%#x) = %d, want %d", tc.hash, got, tc.want)
		}
	}
}

// TestMaglevTableShares checks that the table holds entries in proportion to
// the weights: in Envoy's weighted fill, endpoint i's count is within one
// turn of R·W_i/max W after R rounds, which bounds its error by 1 + p_i·n
// entries.
func TestMaglevTableShares(t *testing.T) {
	hundred := make([]uint32, 100)
	for i := range hundred {
		hundred[i] = uint32(i%10 + 1)
	}
	for _, weights := range [][]uint32{{1, 1, 1}, {1, 3, 6}, {1, 1000}, hundred} {
		eps := endpoints(weights...)
		p := mustNew(t, Maglev, Config{}, eps, 0, nil).(*maglevPicker[uint16])
		counts := make([]float64, len(weights))
		for _, v := range p.table {
			counts[v]++
		}
		for i, want := range shares(weights) {
			if d, tol := math.Abs(counts[i]-want*MaglevTableSize), 1+want*float64(len(weights)); d > tol {
				t.Errorf("weights %v: endpoint %d has %v entries, want %.1f ± %.1f", weights, i, counts[i], want*MaglevTableSize, tol)
			}
		}
	}
}

// TestHashDeterministic checks that ring_hash and maglev map a hash to the
// same endpoint whatever the seed, and (ring_hash) whatever the order of the
// endpoints: every sidecar of a fleet agrees.
func TestHashDeterministic(t *testing.T) {
	eps := endpoints(1, 2, 3, 4, 5)
	reversed := slices.Clone(eps)
	slices.Reverse(reversed)
	for _, policy := range []string{RingHash, Maglev} {
		t.Run(policy, func(t *testing.T) {
			a := mustNew(t, policy, Config{}, eps, 1, nil)
			b := mustNew(t, policy, Config{}, eps, 2, pcg(2))
			r := mustNew(t, policy, Config{}, reversed, 3, nil)
			for k := range 20_000 {
				info := randomHashes(k)
				x := a.Pick(info)
				if y := b.Pick(info); x != y {
					t.Fatalf("hash %#x: seed 1 picks %d, seed 2 picks %d", info.Hash, x, y)
				}
				if policy == RingHash {
					if y := len(eps) - 1 - r.Pick(info); x != y {
						t.Fatalf("hash %#x: endpoint %s in one order, %s in the reverse", info.Hash, eps[x].Address, eps[y].Address)
					}
				}
			}
		})
	}
}

// TestHashRemap removes (and adds) one endpoint and measures the keys that
// move. Consistent hashing moves the keys of the endpoint that left (or
// gives the newcomer its share) and few others.
func TestHashRemap(t *testing.T) {
	const keys = 200_000
	tests := []struct {
		policy string
		n      int
		// maxExtraPP bounds the keys that move, in percentage points
		// above the changed endpoint's share 1/n.
		maxExtraPP float64
		// maxOtherPP bounds the keys that move between endpoints that
		// stayed, in percentage points.
		maxOtherPP float64
	}{
		// 100 equal endpoints keep 11 points each on either side of the
		// change: keys move only to or from the endpoint concerned. An
		// endpoint's arc share of 11 random points varies by about
		// 0.3pp around 1%.
		{RingHash, 100, 1.5, 0},
		// 10 → 9 endpoints: Envoy's sizing gives each 114 points instead
		// of 103 (ceil(1024/n)); the 99 new points, 9.6% of the ring, take
		// keys from their neighbours, about 9/10 of them from another
		// endpoint.
		{RingHash, 10, 11, 10},
		// Maglev's paper: a few entries change hands beyond the departed
		// endpoint's (measured: 0.55% of keys with 100
		// endpoints, 0.18% with 10).
		{Maglev, 100, 1.5, 1},
		{Maglev, 10, 1.5, 1},
	}
	for _, tt := range tests {
		for _, change := range []string{"remove", "add"} {
			t.Run(fmt.Sprintf("%s/n=%d/%s", tt.policy, tt.n, change), func(t *testing.T) {
				ws := make([]uint32, tt.n)
				for i := range ws {
					ws[i] = 1
				}
				all := endpoints(ws...)
				const gone = 3 // index in all of the endpoint that changes
				fewer := slices.Delete(slices.Clone(all), gone, gone+1)
				before, after := all, fewer
				if change == "add" {
					before, after = fewer, all
				}
				// Map results back to an address to compare.
				pb := mustNew(t, tt.policy, Config{}, before, 0, nil)
				pa := mustNew(t, tt.policy, Config{}, after, 0, nil)
				var moved, other int
				for k := range keys {
					info := randomHashes(k)
					x, y := before[pb.Pick(info)].Address, after[pa.Pick(info)].Address
					if x == y {
						continue
					}
					moved++
					if x != all[gone].Address && y != all[gone].Address {
						other++
					}
				}
				movedPP, otherPP := 100*float64(moved)/keys, 100*float64(other)/keys
				share := 100 / float64(tt.n)
				t.Logf("moved %.2f%% (share %.2f%%), between others %.2f%%", movedPP, share, otherPP)
				if movedPP > share+tt.maxExtraPP {
					t.Errorf("moved %.2f%% of keys, want <= %.2f%% + %.1fpp", movedPP, share, tt.maxExtraPP)
				}
				if movedPP < share/2 {
					t.Errorf("moved %.2f%% of keys, want about the endpoint's share %.2f%%", movedPP, share)
				}
				if otherPP > tt.maxOtherPP {
					t.Errorf("%.2f%% of keys moved between endpoints that stayed, want <= %.1f%%", otherPP, tt.maxOtherPP)
				}
			})
		}
	}
}
