package balancer

import (
	"math"
	"math/bits"
	"math/rand/v2"
)

// WeightedRandom is Envoy's RANDOM, weighted.
const WeightedRandom = "weighted_random"

func init() {
	Register(Policy{Name: WeightedRandom, Rank: 10, Build: func(a BuildArgs) Picker {
		return &randomPicker{src: a.rand, s: newSampler(a.Weights)}
	}})
}

// source yields the per-pick random numbers. The zero value uses
// math/rand/v2's top-level generator (a per-thread ChaCha8 state in the
// runtime: goroutine-safe, lock-free, allocation-free).
type source struct {
	fn func() uint64
}

func (s source) next() uint64 {
	if s.fn == nil {
		return rand.Uint64()
	}
	return s.fn()
}

// sampler draws an index i with probability W_i / ΣW in O(1), from one
// 64-bit random number, using Vose's alias method (M. D. Vose, "A linear
// algorithm for generating random numbers with a given distribution", IEEE
// TSE 1991). With equal weights it is a plain uniform draw.
//
// The column is the high word of r·n (Lemire's multiply-shift, "Fast Random
// Integer Generation in an Interval", 2019) and the low word is the
// biased-coin fraction, so one random number serves both. The table is built
// with integer arithmetic and is exact; the draw is exact to within n·2^-64.
type sampler struct {
	n uint64
	// thresh[i] is the probability (in units of 2^-64) of keeping column i
	// rather than taking alias[i]. Nil when all weights are equal.
	thresh []uint64
	alias  []uint32
}

func newSampler(weights []uint64) sampler {
	n := uint64(len(weights))
	s := sampler{n: n}
	if allEqual(weights) {
		return s
	}
	var total uint64
	for _, w := range weights {
		total += w
	}
	// Column i holds scaled[i]/total of one unit; the mean is exactly total.
	scaled := make([]uint64, n)
	var small, large []uint32
	for i, w := range weights {
		scaled[i] = w * n
		if scaled[i] < total {
			small = append(small, uint32(i))
		} else {
			large = append(large, uint32(i))
		}
	}
	s.thresh = make([]uint64, n)
	s.alias = make([]uint32, n)
	for len(small) > 0 && len(large) > 0 {
		sm, lg := small[len(small)-1], large[len(large)-1]
		small = small[:len(small)-1]
		s.thresh[sm], _ = bits.Div64(scaled[sm], 0, total) // scaled[sm] < total
		s.alias[sm] = lg
		scaled[lg] -= total - scaled[sm]
		if scaled[lg] < total {
			large = large[:len(large)-1]
			small = append(small, lg)
		}
	}
	// What remains holds exactly one unit (integer arithmetic leaves no
	// rounding residue): it always keeps its own column.
	for _, i := range append(small, large...) {
		s.thresh[i] = math.MaxUint64
		s.alias[i] = i
	}
	return s
}

func (s *sampler) sample(r uint64) int {
	i, frac := bits.Mul64(r, s.n)
	if s.thresh == nil || frac < s.thresh[i] {
		return int(i)
	}
	return int(s.alias[i])
}

func allEqual(weights []uint64) bool {
	for _, w := range weights[1:] {
		if w != weights[0] {
			return false
		}
	}
	return true
}

// randomPicker is weighted_random: P_i = W_i / ΣW, independently per pick.
type randomPicker struct {
	src source
	s   sampler
}

func (p *randomPicker) Pick(*PickInfo) int { return p.s.sample(p.src.next()) }

// splitmix64 scrambles a seed (Steele, Lea, Flood: "Fast splittable
// pseudorandom number generators", OOPSLA 2014) so that nearby seeds give
// unrelated values.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
