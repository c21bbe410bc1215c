// Command report turns the raw runs of bench/run.sh into the files written
// beside its markdown table: a JSON document with every setup's results
// (best values and every round), an SVG chart of the latency percentiles
// at the fixed rate per setup, and the markdown tables of the HTTP/2 (h2c)
// and gRPC setups.
//
// Its input is the directory of raw runs: one file per setup, round and
// run kind, named SETUP.ROUND.KIND (KIND is closed, open, h2load or
// stream), holding the key=value line bench/loadgen or bench/grpcbench
// printed. Everything else (labels, versions, load average, pinning,
// settings) comes from flags.
//
//	report -runs DIR -setup 'direct=direct (…)' -setup … -json out.json -svg out.svg -md out.md
//
// The JSON schema and the chart are described in bench/README.md.
package main
