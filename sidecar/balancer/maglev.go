package balancer

import (
	"math"

	"github.com/cespare/xxhash/v2"
)

// Maglev is Envoy's MAGLEV.
const Maglev = "maglev"

func init() {
	Register(Policy{Name: Maglev, Rank: 50, Hashing: true, Build: func(a BuildArgs) Picker {
		return newMaglev(a.Config.Maglev.Size(), a.Endpoints, a.Weights, a.rand)
	}})
}

// maglevPicker is maglev: a lookup table of table_size (prime; default
// MaglevTableSize) entries
// filled as in Eisenbud et al., "Maglev: A Fast and Reliable Software Network
// Load Balancer" (NSDI 2016), pseudocode listing 1, with Envoy's weighting
// (source/extensions/load_balancing_policies/maglev/maglev_lb.cc):
//
//   - endpoint i's preference list is permutation(j) = (offset + j·skip) mod M
//     with offset = xxHash64(address, seed 0) mod M and
//     skip = xxHash64(address, seed 1) mod (M-1) + 1;
//   - endpoints take turns claiming their next free preferred entry, in
//     rounds; in round r an endpoint takes a turn only if r·W_i >=
//     target_i, and each turn adds max W to target_i, so an endpoint of
//     weight max W/3 claims an entry every third round.
//
// The table therefore holds entries in proportion to the weights (to within
// the rounding of the last round) and a request with hash h goes to
// table[h mod M]. Removing an endpoint moves its own entries and only few
// others (the paper's "minimal disruption"; measured in the tests). An
// endpoint whose weight is below about max W / M may get no entry, as in
// Envoy. Deterministic: no seed is involved. Without a hash a pick is
// weighted random (exactly W_i/ΣW).
//
// T is uint16 when the endpoints' indices fit, halving the table to 128 KiB.
type maglevPicker[T uint16 | uint32] struct {
	table []T
	src   source
	s     sampler
}

func newMaglev(m uint64, eps []Endpoint, weights []uint64, src source) Picker {
	if len(eps) < math.MaxUint16 {
		return &maglevPicker[uint16]{table: maglevTable[uint16](m, eps, weights), src: src, s: newSampler(weights)}
	}
	return &maglevPicker[uint32]{table: maglevTable[uint32](m, eps, weights), src: src, s: newSampler(weights)}
}

// maglevTable fills a table of m entries (m prime).
func maglevTable[T uint16 | uint32](m uint64, eps []Endpoint, weights []uint64) []T {
	type entry struct {
		offset, skip, next uint64
		target             uint64
	}
	var maxW uint64
	for _, w := range weights {
		maxW = max(maxW, w)
	}
	entries := make([]entry, len(eps))
	d := xxhash.NewWithSeed(1)
	for i, ep := range eps {
		d.ResetWithSeed(1)
		_, _ = d.WriteString(ep.Address)
		entries[i] = entry{
			offset: xxhash.Sum64String(ep.Address) % m,
			skip:   d.Sum64()%(m-1) + 1,
		}
	}
	// Indices are below the table type's maximum (newMaglev picks T so),
	// which therefore marks an empty entry.
	empty := ^T(0)
	table := make([]T, m)
	for i := range table {
		table[i] = empty
	}
	filled := uint64(0)
	for round := uint64(1); filled < m; round++ {
		for i := range entries {
			e := &entries[i]
			if round*weights[i] < e.target {
				continue
			}
			e.target += maxW
			c := (e.offset + e.skip*e.next) % m
			for table[c] != empty {
				e.next++
				c = (e.offset + e.skip*e.next) % m
			}
			table[c] = T(i)
			e.next++
			if filled++; filled == m {
				break
			}
		}
	}
	return table
}

func (p *maglevPicker[T]) Pick(info *PickInfo) int {
	if info == nil || !info.HasHash {
		return p.s.sample(p.src.next())
	}
	return int(p.table[info.Hash%uint64(len(p.table))])
}
