// Package consul is the Consul discovery source (`discovery.consul`) and the
// Consul registration of this instance.
//
// # Discovery
//
// Source keeps one blocking query per watched service on Consul's health
// endpoint (/v1/health/service/<name>, through
// github.com/hashicorp/consul/api), started on the service's first Watch and
// shared by all its watchers; nothing queries Consul per request or per dial.
// WatchServices (discovery.Catalog, for a control plane serving every
// service) keeps one more blocking query, on /v1/catalog/services.
// The index is handled as Consul's blocking-query documentation asks
// (https://developer.hashicorp.com/consul/api-docs/features/blocking): the
// X-Consul-Index of one answer is the index of the next query; an index that
// goes backwards resets to 0 (read the current state at once); an index of 0
// becomes 1 (0 would never block); and query starts are spaced by at least
// MinQueryInterval, so no index, however wrong, makes the loop spin.
//
// Instances become endpoints with the weights Consul gives Envoy
// (agent/xds/endpoints.go): Weights.Passing when every check passes,
// Weights.Warning (health Degraded) when any warns, excluded when any is
// critical; weights default to 1/1 and are clamped to 1..MaxWeight (128).
// The address is Service.Address, else Node.Address.
//
// A failed, erroring or hanging query (cut at wait + wait/16 +
// RequestTimeout) is an ambient error: watchers keep the last endpoints.
// The next attempt waits an exponential backoff with full jitter and reads
// the current state without blocking, so what changed meanwhile arrives as
// soon as Consul answers again. A snapshot's Version increases only when the
// endpoints change; every successful answer re-publishes the current
// snapshot, which tells watchers the data is fresh. Stats exposes, per
// service, when Consul last vouched for the data and the failure counts.
//
// # Registration
//
// Registrar registers this instance with the local agent (ID = node, Name,
// the inbound listener's address and port, Weights.Passing = weight, meta,
// an HTTP check), watches the agent's copy with a blocking query and
// registers again when the agent has lost it (an agent restart), and
// deregisters when its context ends.
//
// # Concurrency
//
// Source: Watch, Stats and Close from any goroutine; one goroutine per
// watched service; callbacks to one watcher are serial (discovery.Fanout).
// Registrar: Run once, on its own goroutine; Stats from any goroutine.
package consul
