// Package upstream owns the one model of an upstream's settings: everything
// said about how traffic to one upstream service is balanced, retried,
// timed out, ejected, limited and health checked.
//
// Settings is filled by YAML decoding (the sidecar's config file embeds it
// in each upstreams[] entry), checked by Validate, completed by SetDefaults,
// translated to Envoy resources by the xDS server (package xds) and decoded
// back from them by the xDS client. Merge is the rule that combines the two
// sources: a key set in the sidecar's own file wins; every key left out
// takes the control plane's value.
//
// The sections with their own packages keep their types there
// (sidecar/balancer, sidecar/outlier, sidecar/breaker, sidecar/health);
// Settings references them. This package imports only those leaf packages
// and the standard library.
//
// Adding a setting: one field (with its YAML key) on Settings or on the
// section's Config, its default in SetDefaults, its check in Validate, and,
// when the control plane is to serve it, its mapping in xds/translate.go and
// xds/decode.go.
package upstream
