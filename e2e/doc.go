// Package e2e holds end-to-end tests: they build (or take, from
// $SIDEMESH_BIN) the real bin/sidemesh binary and drive it as a user
// would, against real backends, a real Consul agent and a real Jaeger.
package e2e
