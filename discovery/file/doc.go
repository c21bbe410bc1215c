// Package file is the static endpoints-file discovery source
// (`discovery.file`). The file is polled (every 200ms by default, so a change
// is noticed well inside a second, whether an editor rewrites it in place or
// renames a new file over it). A file that fails to parse or validate keeps
// the last good endpoints in service (an ambient error, logged with file and
// line); a service that disappears from a valid file gets a resource error.
//
// Only the services someone watches are kept (a sidecar keeps its upstreams,
// not the whole mesh); watches that start together share one parse. A
// catalog watcher (WatchServices, a control plane serving every service of
// the file) makes the source keep them all and hears of every change of the
// set of services.
//
// Parsing: the usual shape of the file (a services map of lists of
// one-line flow mappings or simple block mappings) is read by a one-pass
// scanner that allocates little more than the endpoints; anything else goes
// to the general YAML decoder (internal/confyaml), which also writes every
// error message. FuzzParse holds the two to the same result. Polling reads
// the file into one reused buffer, so an unchanged file costs no garbage.
package file
