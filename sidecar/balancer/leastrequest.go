package balancer

import (
	"math"
	"sync/atomic"
)

// LeastRequest is Envoy's LEAST_REQUEST.
const LeastRequest = "least_request"

func init() {
	Register(Policy{Name: LeastRequest, Rank: 30, Build: func(a BuildArgs) Picker {
		return newLeastRequest(a.Config.LeastRequest, a.Endpoints, a.Weights, a.rand)
	}})
}

// leastRequestPicker is least_request: choice_count candidates are drawn at
// random and the least loaded one wins.
//
// All weights equal: Envoy's P2C. Candidates are drawn uniformly and the one
// with the fewest active requests wins; ties keep the earlier candidate.
//
// Weights differ: Envoy switches to an EDF schedule whose entries carry the
// effective weight weight / (active + 1)^active_request_bias (see
// least_request.proto and source/extensions/load_balancing_policies/
// least_request/least_request_lb.h). That schedule is mutable state behind a
// lock; here the pick stays lock-free by doing what that header names as its
// alternative: P2C over the endpoints "expanded by weight". Candidates are
// drawn in proportion to weight (the alias table of weighted_random) and the
// winner is the candidate with the least load per unit of weight,
//
//	active^bias / weight    (smallest wins; ties keep the earlier candidate)
//
// which orders candidates as Envoy's effective weight does, except that the
// weight enters once, through the draw, and not a second time through the
// comparison. (Comparing weight/(active+1)^bias between candidates that were
// already drawn by weight would count the weight twice: with every endpoint
// idle, weights 1:3:6 with choice_count 2 would get 1%:15%:84% instead of
// 10%:30%:60%.) With equal weights the rule is the P2C above, so one rule
// covers both cases.
//
// A candidate that repeats the current best is drawn again, up to lrRedraws
// times. Envoy draws with replacement, so its most loaded host still wins
// 1/n² of picks (when it is both candidates), although its documentation
// says that host "will never receive new requests"; with weight-proportional
// draws that floor would be (W_i/ΣW)², 36% for a stuck endpoint holding 60%
// of the weight. Redrawing brings it to (W_i/ΣW)^(2+lrRedraws) (0.6% in that
// example). The first candidate is still a plain weighted draw and wins all
// ties, so:
//   - idle endpoints, or endpoints loaded in proportion to their weights,
//     get exactly W_i / ΣW;
//   - a larger bias lets load outweigh weight more (a^bias/w orders like
//     a/w^(1/bias)); bias 0 ignores load, as in Envoy, leaving weighted
//     random.
type leastRequestPicker struct {
	src     source
	s       sampler
	active  []*atomic.Int64
	choices int
	// mode selects the comparison (see load).
	mode lrMode
	// invWeight[i] = 1/W_i; nil for lrEqual.
	invWeight []float64
	bias      float64
}

// lrRedraws bounds how often a candidate equal to the current best is drawn
// again (the cost is paid only on a repeat: expected q/(1-q) extra draws
// when the best holds a share q of the weight).
const lrRedraws = 8

type lrMode uint8

const (
	lrEqual      lrMode = iota // equal weights: fewest active
	lrIgnoreLoad               // bias 0: first candidate (weighted random)
	lrBiasOne                  // active / weight
	lrBias                     // active^bias / weight
)

func newLeastRequest(cfg LeastRequestConfig, eps []Endpoint, weights []uint64, src source) *leastRequestPicker {
	p := &leastRequestPicker{
		src:     src,
		s:       newSampler(weights),
		active:  make([]*atomic.Int64, len(eps)),
		choices: int(cfg.ChoiceCount),
		bias:    cfg.Bias(),
	}
	for i, ep := range eps {
		p.active[i] = ep.Active
	}
	switch {
	case p.s.thresh == nil:
		p.mode = lrEqual
	case p.bias == 0:
		p.mode = lrIgnoreLoad
	case p.bias == 1:
		p.mode = lrBiasOne
	default:
		p.mode = lrBias
	}
	if p.mode == lrBiasOne || p.mode == lrBias {
		p.invWeight = make([]float64, len(weights))
		for i, w := range weights {
			p.invWeight[i] = 1 / float64(w)
		}
	}
	return p
}

func (p *leastRequestPicker) Pick(*PickInfo) int {
	best := p.s.sample(p.src.next())
	switch p.mode {
	case lrIgnoreLoad:
		return best
	case lrEqual:
		bestActive := p.activeOf(best)
		for range p.choices - 1 {
			i := p.candidate(best)
			if a := p.activeOf(i); a < bestActive {
				best, bestActive = i, a
			}
		}
		return best
	}
	bestLoad := p.load(best)
	for range p.choices - 1 {
		i := p.candidate(best)
		if l := p.load(i); l < bestLoad {
			best, bestLoad = i, l
		}
	}
	return best
}

// candidate draws the next candidate, drawing again while it repeats best.
func (p *leastRequestPicker) candidate(best int) int {
	i := p.s.sample(p.src.next())
	for r := 0; i == best && r < lrRedraws; r++ {
		i = p.s.sample(p.src.next())
	}
	return i
}

// activeOf reads endpoint i's outstanding requests (nil and negative read 0).
func (p *leastRequestPicker) activeOf(i int) int64 {
	c := p.active[i]
	if c == nil {
		return 0
	}
	return max(c.Load(), 0)
}

// load is active^bias / weight (lrBiasOne, lrBias).
func (p *leastRequestPicker) load(i int) float64 {
	a := float64(p.activeOf(i))
	if p.mode == lrBias && a > 0 {
		a = math.Pow(a, p.bias)
	}
	return a * p.invWeight[i]
}
