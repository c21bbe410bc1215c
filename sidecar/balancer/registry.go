package balancer

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Policy is one load-balancing policy as the registry knows it. Each policy
// file registers its own from an init function.
type Policy struct {
	// Name is the lb_policy value (Envoy's lb_policy name, lower case).
	Name string
	// Rank orders the names in listings and error messages (lowest first).
	Rank int
	// Hashing reports that picks use PickInfo.Hash: the upstream's
	// hash_policy applies only under such a policy.
	Hashing bool
	// Build returns a picker over args.Endpoints; New calls it with at least
	// two endpoints, a defaulted and validated Config and weights >= 1.
	Build func(args BuildArgs) Picker
}

// BuildArgs is what a policy builds its picker from.
type BuildArgs struct {
	Config    Config
	Endpoints []Endpoint
	// Weights are the endpoints' weights, each >= 1, by index.
	Weights []uint64
	// Seed decorrelates instances (see New).
	Seed uint64
	rand source
}

// Rand returns a uniformly distributed 64-bit value from the picker's
// random source (math/rand/v2's generator unless NewWithRand injected one).
func (a BuildArgs) Rand() uint64 { return a.rand.next() }

func (p Policy) build(args BuildArgs) Picker { return p.Build(args) }

var (
	regMu    sync.RWMutex
	registry = map[string]Policy{}
)

// Register adds a policy. It panics on an empty or repeated name or a nil
// Build: registration happens at init, and either is a programming error.
func Register(p Policy) {
	if p.Name == "" || p.Build == nil {
		panic("balancer: Register needs a name and a Build function")
	}
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := registry[p.Name]; dup {
		panic(fmt.Sprintf("balancer: policy %q registered twice", p.Name))
	}
	registry[p.Name] = p
}

// Lookup returns the registered policy called name.
func Lookup(name string) (Policy, bool) {
	regMu.RLock()
	defer regMu.RUnlock()
	p, ok := registry[name]
	return p, ok
}

// ValidPolicy reports whether New accepts the policy name.
func ValidPolicy(name string) bool {
	_, ok := Lookup(name)
	return ok
}

// Hashing reports whether the policy called name uses the request's hash
// (false for an unknown name).
func Hashing(name string) bool {
	p, ok := Lookup(name)
	return ok && p.Hashing
}

// Policies returns the registered policy names, ordered by Rank.
func Policies() []string {
	regMu.RLock()
	ps := make([]Policy, 0, len(registry))
	for _, p := range registry {
		ps = append(ps, p)
	}
	regMu.RUnlock()
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].Rank != ps[j].Rank {
			return ps[i].Rank < ps[j].Rank
		}
		return ps[i].Name < ps[j].Name
	})
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.Name
	}
	return names
}

// PolicyList is Policies joined for messages: "weighted_random,
// round_robin, ...".
func PolicyList() string { return strings.Join(Policies(), ", ") }
