// Package balancer owns load-balancing policy: which endpoint a request goes
// to. It knows nothing of connections, proxying or discovery sources, and
// imports nothing of sidemesh (TestImports).
//
// A Picker is built from the endpoints that are currently eligible (the
// cluster filters out ejected and unhealthy ones and rebuilds the picker when
// that set or a weight changes) and is immutable afterwards: the request path
// loads it through an atomic pointer and calls Pick concurrently from many
// goroutines. Pick takes no mutex and allocates nothing (TestPickAllocs).
// New copies the endpoints; only the Active counters are shared, and the
// cluster owns them across rebuilds.
//
// Every policy honours endpoint weights: an endpoint's long-run share is
// P_i = W_i / Σ W_j (exact over each cycle for round_robin; in expectation for
// the random policies; for least_request when all endpoints are equally
// loaded).
//
// Policies register themselves by name (Register, from an init function in
// the policy's own file); New, ValidPolicy, Hashing and the "must be one of"
// messages all come from that registry. Adding a policy is one file here
// holding its picker and its Register call.
//
// The policies (Envoy's names; each type's doc cites its source):
//
//   - weighted_random: Vose's alias table, O(1) with one 64-bit random
//     number per pick; plain uniform when weights are equal.
//   - round_robin: a precomputed earliest-deadline-first schedule of one
//     cycle (Σ W / gcd, at most MaxSchedule entries; above that weights are
//     scaled and shares are exact to 1/(2·MaxSchedule)), walked by a single
//     atomic counter that starts at a seed-derived offset.
//   - least_request: Envoy's power-of-two-choices with choice_count
//     candidates; with unequal weights candidates are drawn by weight and
//     compared by active^active_request_bias / weight (see
//     leastRequestPicker for how and why this differs from Envoy's EDF).
//   - ring_hash: Ketama ring over xxHash64("<address>_<k>"), sized between
//     minimum_ring_size and maximum_ring_size as Envoy sizes it.
//   - maglev: Envoy's weighted Maglev table of table_size entries (a prime,
//     default MaglevTableSize).
//
// ring_hash and maglev use PickInfo.Hash when HasHash is set and are
// deterministic (the same endpoints map a hash to the same endpoint on every
// sidecar); without a hash they pick weighted at random.
//
// Randomness: per-pick random numbers come from math/rand/v2's top-level
// generator (per-thread state in the runtime: no lock, no allocation);
// NewWithRand injects a deterministic source for tests. The seed given to New
// only decorrelates instances (round_robin's start); it never changes a share.
package balancer
