// Command grpcbench is the benchmark's gRPC server and client (grpc-go),
// for the gRPC rows of bench/run.sh: direct, through sidemesh
// (`protocol: grpc`) and through HAProxy (`proto h2` both sides).
//
// The service, sidemesh.bench.Bench, is declared by hand over the
// well-known wrapper messages, so no generated code is needed:
//
//   - Unary(BytesValue) returns a BytesValue of -size bytes;
//   - Download(UInt32Value n) streams BytesValues of n bytes until the
//     client cancels.
//
// Client modes, each one line of key=value pairs on stdout in the format of
// bench/loadgen (package bench/internal/measure):
//
//   - closed: -c connections × -m workers each send unary calls back to
//     back (throughput);
//   - open: unary calls released at -rate through a bounded queue to the
//     same workers (latency percentiles from each call's release, no
//     coordinated omission);
//   - stream: -c × -m Download streams of -chunk-byte messages (MB/s).
//
// The proxy's CPU time and RSS are read from /proc around the measured
// window (-pids), as loadgen does.
//
//	grpcbench -serve -addr 127.0.0.1:9000 [-size 100]
//	grpcbench -addr 127.0.0.1:9000 -mode closed -c 8 -m 16 -d 5s -pids 1234
//	grpcbench -addr 127.0.0.1:9000 -mode open -rate 2000 -c 8 -m 16 -d 5s
//	grpcbench -addr 127.0.0.1:9000 -mode stream -c 1 -m 1 -chunk 65536 -d 5s
//	grpcbench -addr 127.0.0.1:9000 -probe
package main
