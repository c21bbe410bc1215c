// Package mtls owns the sidecar's mesh identity: the leaf certificate and
// trust bundle in force (swapped atomically, so a rotation applies to the
// next handshake), the TLS configurations of the inbound listener (client
// certificate required, SPIFFE chain and trust domain verified locally) and
// of outbound origination (the server must present the upstream service's
// SPIFFE ID), the permissive listener that sniffs TLS from plaintext, the
// file-based identity source (cert_file, key_file, ca_file reloaded when
// they change) and the intentions policy that authorizes a source identity
// per connection or per HTTP request. It knows nothing of Consul or of the
// proxy: sources feed it material and policies.
package mtls
