// Package sidecar is the data plane: the config file, the listeners
// (outbound per upstream, inbound to the local app, transparent), the HTTP
// and TCP proxies, the clusters, the admin server and the metrics.
//
// Data flows one way. A discovery.Source delivers snapshots to a Cluster
// (onUpdate/onResourceError/onAmbientError); the Cluster keeps one Host per
// endpoint address (counters, outlier and health state survive updates) and
// rebuilds an immutable balancer.Picker whenever the eligible set changes
// (snapshot, ejection, health verdict, slow-start step), publishing it with
// an atomic pointer. The request path picks with one atomic load and one
// Pick: no mutex, no allocation.
//
// Every attempt, HTTP or TCP, starts with a pick and ends with the pick's
// Done(DoneInfo) (pick.go), the only feedback from the data path: the
// least-request active count, the circuit-breaker slots (the breaker wraps
// the picker for HTTP: a request slot is taken before the pick and given
// back in Done), outlier results and per-endpoint metrics. Connections to
// endpoints are made in one place (dial.go): max_connections, connect
// timeout, connect outcomes for outlier detection, cx_active accounting.
//
// The HTTP proxy (httpproxy.go) is httputil.ReverseProxy over a cluster
// transport whose RoundTrip runs the attempts (attempt.go) under the retry
// policy (retry.go); HTTP/1.1 upstreams use the lean client of package
// http1client. The TCP proxy (tcpproxy.go) relays with splice. Every answer
// the sidecar makes itself comes from one mapping (localreply.go).
//
// Concurrency: Cluster methods used on the request path (pick, breaker,
// policyName, connectTimeout, dial) are safe from any goroutine; the rest
// take Cluster.mu. Sidecar.Start and Shutdown are called once each.
package sidecar
