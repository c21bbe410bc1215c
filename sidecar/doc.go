// Package sidecar is the data plane: the config file, the listeners
// (outbound per upstream, inbound to the local app, transparent), the HTTP
// and TCP proxies, the clusters, the admin server and the metrics.
//
// Data flows one way. A discovery.Source delivers snapshots to a Cluster
// (onUpdate/onResourceError/onAmbientError); the Cluster keeps one Host per
// endpoint address (counters, outlier and health state survive updates) and
// rebuilds an immutable balancer.Picker whenever the eligible set changes
// (snapshot, ejection, health verdict, slow-start step), publishing it with
// an atomic pointer. The request path (Cluster.pick) is one atomic load and
// one Pick: no mutex, no allocation.
//
// Mechanism is apart from policy: an Engine turns a Cluster into an HTTP
// handler (the default is httputil.ReverseProxy over a pooled transport whose
// RoundTrip picks, retries, applies breakers and feeds outlier detection);
// the TCP proxy relays with splice. Errors are mapped to the contract's
// answers in one place (errors.go).
//
// Concurrency: Cluster methods used on the request path (pick, breaker,
// policyName, connectTimeout) are safe from any goroutine; the rest take
// Cluster.mu. Sidecar.Start and Shutdown are called once each.
package sidecar
