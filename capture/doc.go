// Package capture owns the transparent-capture rules of a pod: which TCP
// connections the kernel redirects to the sidecar (outbound to the
// transparent listener, inbound to the inbound listener) and which it leaves
// alone (the sidecar's own uid, loopback, excluded ports, CIDRs and uids).
//
// The rules are built once as a small model (Build) and rendered by two
// backends: Netlink programs nf_tables directly (no binary needed, one
// atomic batch per install), Iptables runs the iptables/ip6tables binaries.
// Text renders the model as nft syntax for --dry-run. Both backends use
// REDIRECT semantics in the nat hooks, so SO_ORIGINAL_DST returns the
// address the client dialled.
package capture
