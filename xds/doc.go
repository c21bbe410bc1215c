// Package xds owns sidemesh's xDS: the translation of endpoint snapshots
// and upstream settings into Envoy resources, the embedded xDS server, and
// the xDS client source.
//
// Upstream settings are the one model of package upstream: the server
// translates an Upstream (service name and upstream.Settings) and the
// client decodes a Cluster back into upstream.Settings, filling only what
// a Cluster carries. A balancer policy served over CDS has its entry in
// lbTranslators (translate.go) and its case in DecodeCluster (decode.go).
//
// Translation (Resources, Cluster; DecodeCluster and DecodeLoadAssignment
// go back) is pure and golden-tested (testdata/*.golden; go test -update
// rewrites them). Per service it makes an EDS Cluster carrying the lb
// policy, outlier detection, circuit breakers and health checks, a
// ClusterLoadAssignment with each endpoint's load_balancing_weight and
// health, and, for proxyless gRPC clients dialing xds:///SERVICE, an API
// Listener (HttpConnectionManager, RDS over ADS, router filter) and its
// RouteConfiguration.
//
// What gRPC does with these (grpc-go v1.85): it honours ROUND_ROBIN (its
// round_robin ignores endpoint weights, grpc/grpc#32004), RING_HASH (with
// endpoint weights; random hash per call without a hash policy) and
// LEAST_REQUEST; it NACKs RANDOM and MAGLEV, so for weighted_random and
// maglev the Cluster lists the Envoy policy and a gRPC fallback in
// load_balancing_policy (random→round_robin, maglev→ring_hash). gRPC
// skips localities of weight 0, so every assignment has one locality of
// weight 1. gRPC uses endpoints whose health is HEALTHY or UNKNOWN.
//
// Server serves ADS and CDS, EDS, LDS and RDS, delta and state of the
// world, from our own handlers (delta.go: one goroutine per stream, one
// immutable snapshot per type with each resource encoded once and the
// names changed since the previous one, per stream a shared set of
// subscribed names and a pointer to the snapshot the client is in sync
// with; sotw.go: the same snapshots and name sets, one shared resource
// list per distinct set of names, go-control-plane's sotw semantics). Its source of truth is a
// discovery.Source (with ServeCatalog, every service a discovery.Catalog
// lists, Defaults for those without settings of their own); changes there
// (coalesced over Debounce) make one new, consistent snapshot, the same for
// every node, whose per-type versions are hashes of the content: an
// endpoint change moves only EDS, a settings change only CDS, and replicas
// with the same state serve the same versions. Clients and Stats feed the
// control plane's /clients, /config_dump and /metrics. State of the world
// answers as go-control-plane's snapshot cache in non-ADS mode: in ADS
// mode it answers a request only if it names every resource of the type,
// and our clients (and gRPC) subscribe to subsets.
//
// Client is a discovery.Source over one ADS stream, delta by default with
// a state-of-the-world fallback against a server without delta: it
// subscribes exactly the watched services and unsubscribes a service when
// its last watch is cancelled (a reload), ACKs and NACKs with
// error_detail, keeps the last good data per resource, reconnects with
// jittered exponential backoff (to another replica when
// discovery.xds.address lists several or a DNS name has several
// addresses) and resubscribes, with ambient errors during outages. Stats and WriteClientMetrics/WriteServerMetrics
// feed /config_dump and /metrics.
//
// This package imports discovery, upstream and the leaf packages that own
// the settings' sections (sidecar/balancer, outlier, breaker, health),
// never the sidecar itself (TestImportDirection). FuzzDecodeCluster and
// FuzzDecodeLoadAssignment check that no received resource panics the
// decoders and that every rejection names its resource.
package xds
