// Package breaker owns circuit breaking: the per-upstream limits on
// connections, pending requests, requests and retries of Envoy's
// circuit_breakers (envoy/config/cluster/v3/circuit_breaker.proto), with
// Envoy's names and defaults (1024, 1024, 1024, 3) and its retry budget
// (budget_percent 20, min_retry_concurrency 3), which replaces max_retries
// when configured. It is pure mechanism: the proxy decides when to acquire
// and release, and maps an Overflow to its 503 (with
// x-sidemesh-overloaded: true and the threshold's name).
//
// The intended use on the request path:
//
//	if err := b.AcquireRequest(); err != nil { /* 503: err names the threshold */ }
//	defer b.ReleaseRequest()
//	// no idle connection: wait for a connection slot as a pending request
//	if err := b.AcquirePending(); err != nil { /* 503 */ }
//	err := b.AcquireConn(ctx) // blocks while max_connections is reached
//	b.ReleasePending()
//	// ... the connection's owner calls b.ReleaseConn() when it closes
//	// a retry holds a retry slot (and a request slot) for its attempt:
//	if err := b.AcquireRetry(); err != nil { /* give up retrying */ }
//	defer b.ReleaseRetry()
//
// Every counter is an atomic compare-and-swap against its limit, so a
// Breaker never lets a count exceed its limit and never takes a lock, except
// while AcquireConn waits. Overflows are counted per threshold and, with
// current usage, reported by Stats.
package breaker
