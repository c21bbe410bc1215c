package sidecar

import (
	"math"
	"math/rand/v2"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
)

// OverprovisioningFactor is Envoy's default overprovisioning factor (140 %):
// a priority level whose healthy share is h takes min(100 %, 1.4·h) of the
// traffic before any spills to the next level.
const OverprovisioningFactor = 1.4

// levelCount is what the priority load depends on for one level: how many
// hosts it has and how many of them are healthy (eligible).
type levelCount struct {
	Healthy, Total int
}

// priorityPlan is Envoy's priority load for a set of levels.
type priorityPlan struct {
	// Health is each level's health: min(100, 1.4 · healthy share), percent.
	Health []float64
	// Load is each level's share of the traffic, percent; it sums to 100
	// when any level has hosts.
	Load []float64
	// Panic says a level balances over all its hosts, unhealthy ones
	// included (Envoy's per-priority panic).
	Panic []bool
	// TotalPanic says every level is in panic: the load then follows the
	// host counts instead of health.
	TotalPanic bool
	// NormalizedHealth is min(100, Σ Health).
	NormalizedHealth float64
}

// planPriorities computes Envoy's priority load (overprovisioning factor
// 1.4) and panic state for levels ordered from priority 0:
//
//	health(P)   = min(100, 1.4 · 100 · healthy(P) / total(P))
//	normalized  = min(100, Σ health(P))
//	load(P)     = min(100 − Σ_{Q<P} load(Q), health(P) · 100 / normalized)
//
// While normalized is 100 no level panics (a healthy failover level keeps
// a failed local one out of panic). Below 100, a level whose own healthy
// share is under panicPct is in panic; when every level is, the load is
// spread by host count (Envoy's total panic). A level with no hosts takes
// no load.
func planPriorities(levels []levelCount, panicPct float64) priorityPlan {
	n := len(levels)
	p := priorityPlan{Health: make([]float64, n), Load: make([]float64, n), Panic: make([]bool, n)}
	totalHosts := 0
	for i, l := range levels {
		totalHosts += l.Total
		if l.Total > 0 {
			p.Health[i] = math.Min(100, OverprovisioningFactor*100*float64(l.Healthy)/float64(l.Total))
		}
		p.NormalizedHealth += p.Health[i]
	}
	p.NormalizedHealth = math.Min(100, p.NormalizedHealth)
	if totalHosts == 0 {
		return p
	}
	all := true
	for i, l := range levels {
		if l.Total == 0 {
			continue
		}
		if p.NormalizedHealth < 100 {
			p.Panic[i] = p.NormalizedHealth == 0 || 100*float64(l.Healthy)/float64(l.Total) < panicPct
		}
		all = all && p.Panic[i]
	}
	if all {
		p.TotalPanic = true
		for i, l := range levels {
			p.Load[i] = 100 * float64(l.Total) / float64(totalHosts)
		}
		return p
	}
	left := 100.0
	for i := range levels {
		p.Load[i] = math.Min(left, p.Health[i]*100/p.NormalizedHealth)
		left -= p.Load[i]
	}
	return p
}

// level is one priority level of a pickState: its picker over the hosts it
// balances (the healthy ones, or all but source-unhealthy ones in panic).
type level struct {
	priority uint32
	picker   balancer.Picker
	hosts    []*Host
	weights  []uint32 // effective weights (slow start applied), by hosts index
	panic    bool
	healthy  int // eligible hosts
	total    int // every host of the level, source-unhealthy ones included
	health   float64
	load     float64  // percent of the traffic
	zones    []string // zone of each host, by hosts index
	// zr is the level's zone-aware routing (nil: off); zs its status.
	zr *zoneRoute
	zs *ZoneStatus
}

// chooseLevel picks the level a request goes to: by the request hash when
// the policy hashes (so one key stays on one level), else at random. cum
// holds the cumulative load of st.levels scaled to 2^32.
func (st *pickState) chooseLevel(info *balancer.PickInfo) *level {
	if len(st.levels) == 1 {
		return &st.levels[0]
	}
	var r uint32
	if info != nil && info.HasHash {
		r = uint32(info.Hash >> 32)
	} else {
		r = rand.Uint32()
	}
	for i := range st.cum {
		if uint64(r) < st.cum[i] {
			return &st.levels[i]
		}
	}
	return &st.levels[len(st.levels)-1]
}

// cumulative turns per-level loads (percent) into the thresholds
// chooseLevel compares a 32-bit random number with; a level with no load
// gets an empty range.
func cumulative(loads []float64) []uint64 {
	cum := make([]uint64, len(loads))
	var sum float64
	for _, l := range loads {
		sum += l
	}
	acc := 0.0
	for i, l := range loads {
		acc += l
		if sum > 0 {
			cum[i] = uint64(math.Round(acc / sum * (1 << 32)))
		}
	}
	return cum
}
