package balancer

import (
	"errors"
	"fmt"
	"sync/atomic"
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

// Errors returned by New and Config.Validate. They are wrapped with %w and
// context (the policy name, the YAML key path and value).
var (
	ErrUnknownPolicy = errors.New("balancer: unknown lb_policy")
	ErrInvalidConfig = errors.New("balancer: invalid config")
)

// New builds an immutable picker for policy over eps, using math/rand/v2's
// goroutine-safe, lock-free top-level generator for per-pick randomness.
//
// cfg is defaulted (SetDefaults on a copy) and validated. eps is copied: the
// caller may reuse the slice afterwards; the Active counters are shared, not
// copied. A Weight of 0 is treated as 1.
//
// seed varies what may differ between instances of a fleet without changing
// any share: the start of round_robin's schedule. Pass a value that differs
// per sidecar (and per rebuild), e.g. rand.Uint64(). ring_hash and maglev
// are deterministic: the same endpoints give the same mapping on every
// instance whatever the seed.
func New(policy string, cfg Config, eps []Endpoint, seed uint64) (Picker, error) {
	return NewWithRand(policy, cfg, eps, seed, nil)
}

// NewWithRand is New with the per-pick random source replaced by rnd, which
// must return uniformly distributed 64-bit values and be safe for concurrent
// use if the picker is used concurrently. Tests pass a seeded PCG and pick
// from one goroutine. A nil rnd means math/rand/v2's rand.Uint64.
func NewWithRand(policy string, cfg Config, eps []Endpoint, seed uint64, rnd func() uint64) (Picker, error) {
	pol, ok := Lookup(policy)
	if !ok {
		return nil, fmt.Errorf("%w: %q (want one of %s)", ErrUnknownPolicy, policy, PolicyList())
	}
	cfg.SetDefaults()
	if err := cfg.Validate(""); err != nil {
		return nil, err
	}
	switch len(eps) {
	case 0:
		return constPicker(-1), nil
	case 1:
		return constPicker(0), nil
	}
	weights := make([]uint64, len(eps))
	for i, ep := range eps {
		weights[i] = max(uint64(ep.Weight), 1)
	}
	return pol.build(BuildArgs{Config: cfg, Endpoints: eps, Weights: weights, Seed: seed, rand: source{fn: rnd}}), nil
}

// constPicker always answers the same index: -1 for no endpoints, 0 for one.
type constPicker int

func (c constPicker) Pick(*PickInfo) int { return int(c) }
