// Package confyaml decodes the YAML files sidemesh reads (the sidecar config
// and the endpoints file) into Go structs, strictly and safely.
//
// It owns the rules both files share:
//
//   - anchors, aliases and merge keys (`<<`) resolve as YAML says, with a
//     bound on how many nodes may be visited through aliases, so a small file
//     that expands exponentially ("billion laughs") is refused at once;
//   - a key the Go type does not know is an error;
//   - every error is an *Error naming the key path
//     (`upstreams[0].timeout`) and the line in the file as written,
//     type errors included;
//   - a time.Duration needs a unit (`5` is refused, `5s` is not);
//   - optionally, `${VAR}` and `${VAR:-default}` expand in scalar values
//     after parsing (`$$` is a literal `$`), so key paths and lines stay
//     those of the file and the expanded text is typed afresh (a port
//     given as `${PORT}` decodes into an int).
//
// Types that implement yaml.Unmarshaler or encoding.TextUnmarshaler decode
// themselves; they receive an alias-free copy of their node.
package confyaml
