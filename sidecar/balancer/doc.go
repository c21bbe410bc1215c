// Package balancer owns load-balancing policy: which endpoint a request goes
// to. It knows nothing of connections, proxying or discovery sources.
//
// A Picker is built from the endpoints that are currently eligible (the
// cluster filters out ejected and unhealthy ones and rebuilds the picker when
// that set or a weight changes) and is immutable afterwards: the request path
// loads it through an atomic pointer and calls Pick concurrently from many
// goroutines. Pick takes no mutex and allocates nothing.
//
// Every policy honours endpoint weights: an endpoint's long-run share is
// P_i = W_i / Σ W_j (exact over each cycle for round_robin; in expectation for
// the random policies; for least_request when all endpoints are equally
// loaded).
package balancer
