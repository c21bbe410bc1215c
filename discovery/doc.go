// Package discovery owns where endpoints come from.
//
// A Source produces immutable, versioned endpoint Snapshots for the services
// it is asked to Watch. It never touches a balancer: the sidecar turns each
// snapshot into a picker. Sources follow grpc-go's xDS client contract and
// tell three kinds of news apart:
//
//   - OnUpdate: a new (or re-confirmed) snapshot; it replaces the old one.
//   - OnResourceError: the service is gone or its data is invalid; the
//     watcher drops the old endpoints.
//   - OnAmbientError: the source itself is in trouble (unreachable, a parse
//     error in a file, a timeout); the watcher keeps the last good snapshot.
//
// Implementations live here (file, Consul) and in package xds (the xDS
// client). This package imports neither sidecar nor xds.
package discovery
