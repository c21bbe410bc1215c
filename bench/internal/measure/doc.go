// Package measure holds what the benchmark's load generators share: the
// latency histogram, the closed and open loops over a bounded set of
// workers, the measured window with the proxy's CPU time and RSS read from
// /proc, and the one-line key=value result that bench/run.sh and
// bench/report read.
package measure
