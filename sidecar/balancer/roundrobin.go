package balancer

import (
	"math/bits"
	"sync/atomic"
)

// RoundRobin is Envoy's ROUND_ROBIN, weighted.
const RoundRobin = "round_robin"

func init() {
	Register(Policy{Name: RoundRobin, Rank: 20, Build: func(a BuildArgs) Picker {
		return newRoundRobin(a.Weights, a.Seed)
	}})
}

// MaxSchedule bounds the length of a round_robin schedule (Σ of the weights
// after dividing them by their greatest common divisor). Up to this length
// shares are exact over each cycle.
//
// Above it the weights are scaled to sum to about MaxSchedule, each rounded
// to the nearest integer and at least 1: an endpoint's share is then off by
// at most half a slot, 1/(2·MaxSchedule) ≈ 0.00076 percentage points (more
// for an endpoint whose weight rounds up to the 1-slot minimum), and the
// schedule holds at most MaxSchedule + n entries.
const MaxSchedule = 1 << 16

// roundRobinPicker is weighted round robin: a precomputed schedule of one
// cycle, walked by one shared atomic counter. Envoy uses an EDF scheduler
// behind a per-worker lock; the schedule here is the same kind of EDF
// sequence, computed once at build time so that a pick is one atomic add and
// one load.
type roundRobinPicker struct {
	// sched is one cycle of endpoint indices; nil when weights are equal
	// (the schedule is then 0..n-1).
	sched []uint32
	n     uint64 // cycle length
	_     [64]byte
	// next is the only field written on the pick path; the padding keeps it
	// off the cache line holding the read-only fields above.
	next atomic.Uint64
	_    [64]byte
}

func newRoundRobin(weights []uint64, seed uint64) *roundRobinPicker {
	w := reduce(weights)
	p := &roundRobinPicker{}
	if allEqual(w) {
		p.n = uint64(len(w))
	} else {
		p.sched = edfSchedule(w)
		p.n = uint64(len(p.sched))
	}
	// A random start per instance, so that a fleet of sidecars built from
	// the same endpoints does not move in lockstep.
	p.next.Store(splitmix64(seed) % p.n)
	return p
}

func (p *roundRobinPicker) Pick(*PickInfo) int {
	i := (p.next.Add(1) - 1) % p.n
	if p.sched == nil {
		return int(i)
	}
	return int(p.sched[i])
}

// reduce divides the weights by their gcd and, if they still sum to more
// than MaxSchedule, scales them down to about MaxSchedule (see there).
func reduce(weights []uint64) []uint64 {
	w := append([]uint64(nil), weights...)
	divideByGCD(w)
	var total uint64
	for _, x := range w {
		total += x
	}
	if total <= MaxSchedule {
		return w
	}
	// Weights are at most 2^32 (uint32 in Endpoint), so x·MaxSchedule
	// fits in 64 bits.
	for i, x := range w {
		w[i] = max(1, (x*MaxSchedule+total/2)/total)
	}
	divideByGCD(w)
	return w
}

func divideByGCD(w []uint64) {
	g := w[0]
	for _, x := range w[1:] {
		for x != 0 {
			g, x = x, g%x
		}
	}
	for i := range w {
		w[i] /= g
	}
}

// edfSchedule returns one cycle of Σw picks in earliest-deadline-first
// order (ties by index). Endpoint i's k-th pick (k = 0..w_i-1) has deadline
//
//	(k + φ_i) / w_i,   φ_i = (j + ½) / g
//
// where g is the number of endpoints sharing weight w_i and j is i's rank
// among them. With φ = ½ this is the sequence of the Sainte-Laguë/Webster
// divisor method: each endpoint's picks are spread evenly over the cycle, so
// picks interleave rather than come in runs of W_i. Staggering φ within a
// group of equal weights keeps the group's picks from bunching at the same
// deadline (weights 100,1,1,...,1 would otherwise put all the 1s together
// mid-cycle). Deadlines are compared as exact fractions (2gk+2j+1)/(2g·w_i)
// in 128-bit products. Built in O(Σw · log n) with a binary heap.
func edfSchedule(w []uint64) []uint32 {
	var total uint64
	group := make(map[uint64]uint64)
	for _, x := range w {
		total += x
		group[x]++
	}
	type slot struct {
		num, den, step uint64 // deadline num/den; num grows by step per pick
		idx            uint32
	}
	less := func(a, b slot) bool {
		lh, ll := bits.Mul64(a.num, b.den)
		rh, rl := bits.Mul64(b.num, a.den)
		if lh != rh {
			return lh < rh
		}
		if ll != rl {
			return ll < rl
		}
		return a.idx < b.idx
	}
	h := make([]slot, len(w))
	rank := make(map[uint64]uint64, len(group))
	for i, x := range w {
		g := group[x]
		h[i] = slot{num: 2*rank[x] + 1, den: 2 * g * x, step: 2 * g, idx: uint32(i)}
		rank[x]++
	}
	down := func(i int) {
		for {
			c := 2*i + 1
			if c >= len(h) {
				return
			}
			if c+1 < len(h) && less(h[c+1], h[c]) {
				c++
			}
			if !less(h[c], h[i]) {
				return
			}
			h[i], h[c] = h[c], h[i]
			i = c
		}
	}
	for i := len(h)/2 - 1; i >= 0; i-- {
		down(i)
	}
	sched := make([]uint32, 0, total)
	for uint64(len(sched)) < total {
		top := &h[0]
		sched = append(sched, top.idx)
		// The next pick of the same endpoint. Its last pick in the cycle has
		// deadline < 1 and the one after >= 1, so the cycle ends before any
		// endpoint overruns its weight.
		top.num += top.step
		down(0)
	}
	return sched
}
