package balancer

import (
	"errors"
	"sync/atomic"
)

// Policy names (Envoy's lb_policy names, lower case).
const (
	WeightedRandom = "weighted_random"
	RoundRobin     = "round_robin"
	LeastRequest   = "least_request"
	RingHash       = "ring_hash"
	Maglev         = "maglev"
)

// ErrNoEndpoint is what a picker with no endpoints answers.
var ErrNoEndpoint = errors.New("balancer: no endpoint")

// Endpoint is what a policy sees of one endpoint.
type Endpoint struct {
	Address string
	// Weight is the effective weight (>= 1): the discovery weight, possibly
	// lowered by slow start.
	Weight uint32
	// Active counts the requests outstanding on this endpoint. It is owned
	// by the cluster (it survives picker rebuilds) and may be nil, meaning 0.
	Active *atomic.Int64
}

// PickInfo carries what a pick may depend on.
type PickInfo struct {
	// Hash is the request's hash key (ring_hash, maglev); valid when HasHash.
	Hash    uint64
	HasHash bool
}

// Picker picks an endpoint. Pick returns an index into the endpoints the
// picker was built from, or -1 when it has none. Safe for concurrent use.
type Picker interface {
	Pick(info *PickInfo) int
}
