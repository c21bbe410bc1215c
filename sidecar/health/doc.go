// Package health owns active health checking of a cluster's endpoints:
// HTTP, TCP and gRPC (grpc.health.v1) checks run on a timer per endpoint,
// and the threshold machine that turns their results into a healthy or
// unhealthy mark. It only marks: the cluster reads Checker.Healthy when it
// rebuilds its picker and leaves unhealthy endpoints out.
//
// Semantics follow Envoy (envoy/config/core/v3/health_check.proto and the
// "Health checking" architecture overview):
//
//   - A new host is unhealthy until its first check passes; that first
//     check needs a single success, later recoveries need healthy_threshold
//     successes in a row.
//   - A healthy host turns unhealthy after unhealthy_threshold counted
//     failures in a row. Connect errors, timeouts and resets count; so do
//     HTTP statuses in retriable_statuses. An answer that says the host is
//     unhealthy (an HTTP status outside expected_statuses, a gRPC status
//     other than SERVING or an error status from the health service) marks
//     it unhealthy at once, whatever the threshold.
//   - The wait between checks is measured from the end of one check to the
//     start of the next: interval (no_traffic_interval while the cluster
//     has seen no traffic), plus interval_jitter and interval_jitter_percent
//     jitter; the first check waits a random part of initial_jitter.
//   - HTTP checks GET the path over HTTP/1.1 with the Host header set to the
//     configured host, else the cluster's service name, and User-Agent
//     sidemesh-health-check; only 200 passes unless expected_statuses says
//     otherwise; redirects are not followed.
//
// Where we differ: Envoy requires interval, timeout, unhealthy_threshold and
// healthy_threshold; we default them to 5s, 1s, 3 and 2. TCP send/expect
// payloads are the bytes themselves, not hex.
//
// Concurrency: a Checker runs one goroutine per checked address; its
// methods are safe for concurrent use, and the callbacks in Options say on
// which goroutine they run. Close stops and waits for every goroutine.
package health
