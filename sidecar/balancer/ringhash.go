package balancer

import (
	"cmp"
	"math"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// RingHash is Envoy's RING_HASH.
const RingHash = "ring_hash"

func init() {
	Register(Policy{Name: RingHash, Rank: 40, Hashing: true, Build: func(a BuildArgs) Picker {
		return newRingHash(a.Config.RingHash, a.Endpoints, a.Weights, a.rand)
	}})
}

// ringHashPicker is ring_hash: a Ketama-style consistent-hash ring (Karger
// et al., "Consistent hashing and random trees", STOC 1997; Envoy's
// source/extensions/load_balancing_policies/ring_hash/ring_hash_lb.cc).
//
// Endpoint i owns the points xxHash64("<address>_<k>") for k = 0, 1, ...;
// a request with hash h goes to the owner of the first point >= h, wrapping
// to the first point of the ring.
//
// Ring size, as Envoy computes it: with normalized weights p_i = W_i/ΣW,
// scale = min(ceil(min p_i · minimum_ring_size) / min p_i, maximum_ring_size),
// so that the lightest endpoint gets a whole number (at least one) of points
// and the ring holds at least minimum_ring_size of them, capped. Endpoint i
// gets round(scale · p_i) points, at least one. (Envoy distributes
// ceil(scale) points with a running sum over the endpoint list, which makes an
// endpoint's count depend on its neighbours in the list; rounding each count
// on its own keeps an endpoint's points, and so its keys, independent of the
// list order. The total may then differ from ceil(scale) by up to n/2, and
// exceeds maximum_ring_size only if n does.)
//
// The ring depends only on the endpoints' addresses and weights, never on
// the seed, so every sidecar maps a hash to the same endpoint. Without a hash
// a pick is weighted random (exactly W_i/ΣW); Envoy would hash a random
// number into the ring, which only approximates the weights.
type ringHashPicker struct {
	hashes []uint64 // sorted ring points
	owners []uint32 // owners[k] is the endpoint of hashes[k]
	src    source
	s      sampler
}

func newRingHash(cfg RingHashConfig, eps []Endpoint, weights []uint64, src source) *ringHashPicker {
	var total, minW uint64 = 0, math.MaxUint64
	for _, w := range weights {
		total += w
		minW = min(minW, w)
	}
	minNorm := float64(minW) / float64(total)
	scale := math.Min(math.Ceil(minNorm*float64(cfg.MinimumRingSize))/minNorm, float64(cfg.MaximumRingSize))

	type point struct {
		hash  uint64
		owner uint32
	}
	counts := make([]uint64, len(weights))
	var size uint64
	for i, w := range weights {
		counts[i] = max(1, uint64(math.Round(scale*float64(w)/float64(total))))
		size += counts[i]
	}
	ring := make([]point, 0, size)
	var key []byte
	for i, ep := range eps {
		key = append(append(key[:0], ep.Address...), '_')
		prefix := len(key)
		for k := range counts[i] {
			key = strconv.AppendUint(key[:prefix], k, 10)
			ring = append(ring, point{hash: xxhash.Sum64(key), owner: uint32(i)})
		}
	}
	slices.SortFunc(ring, func(a, b point) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return cmp.Compare(a.owner, b.owner)
	})
	p := &ringHashPicker{
		hashes: make([]uint64, len(ring)),
		owners: make([]uint32, len(ring)),
		src:    src,
		s:      newSampler(weights),
	}
	for k, pt := range ring {
		p.hashes[k], p.owners[k] = pt.hash, pt.owner
	}
	return p
}

func (p *ringHashPicker) Pick(info *PickInfo) int {
	if info == nil || !info.HasHash {
		return p.s.sample(p.src.next())
	}
	// Lower bound: the first point >= Hash.
	h := info.Hash
	lo, hi := 0, len(p.hashes)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if p.hashes[m] < h {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(p.owners) {
		lo = 0
	}
	return int(p.owners[lo])
}
