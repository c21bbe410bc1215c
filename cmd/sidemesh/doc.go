// Command sidemesh is the one binary: a sidecar (run), an xDS server (xds),
// the embedded demo (demo), transparent-capture rules (iptables), manifest
// injection (inject) and its version (version). See README.md.
package main
