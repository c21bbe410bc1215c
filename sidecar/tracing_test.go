package sidecar

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

// otlpSink is an in-process OTLP/gRPC collector that counts and discards
// spans, so the tracing benchmarks measure the proxy, not a collector.
type otlpSink struct {
	coltrace.UnimplementedTraceServiceServer
	spans atomic.Int64
}

func (s *otlpSink) Export(_ context.Context, req *coltrace.ExportTraceServiceRequest) (*coltrace.ExportTraceServiceResponse, error) {
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			s.spans.Add(int64(len(ss.Spans)))
		}
	}
	return &coltrace.ExportTraceServiceResponse{}, nil
}

func startOTLPSink(tb testing.TB) (string, *otlpSink) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := grpc.NewServer()
	sink := &otlpSink{}
	coltrace.RegisterTraceServiceServer(srv, sink)
	go srv.Serve(ln)
	tb.Cleanup(srv.Stop)
	return ln.Addr().String(), sink
}

// BenchmarkProxyTracing is the proxy path with tracing off, sampled at 1.0
// and at 0.01 (new traces), spans exported to a local OTLP sink.
func BenchmarkProxyTracing(b *testing.B) {
	for _, ratio := range []string{"off", "1.0", "0.01"} {
		b.Run("sampling="+ratio, func(b *testing.B) {
			be := benchBackend(b)
			cfg := oneUpstream
			var sink *otlpSink
			if ratio != "off" {
				var addr string
				addr, sink = startOTLPSink(b)
				cfg += fmt.Sprintf("tracing: {otlp_endpoint: %s, sampling_ratio: %s}\n", addr, ratio)
			}
			s, _ := startSidecar(b, cfg, endpointsYAML("api", be.addr, 1))
			runLoad(b, "http://"+s.UpstreamAddr("api")+"/")
			b.StopTimer()
			if sink != nil {
				_ = s.tp.ForceFlush(context.Background())
				b.ReportMetric(float64(sink.spans.Load())/float64(b.N), "spans/op")
			}
		})
	}
}

// The tracing benchmark's sink really receives spans (so the benchmark
// measures export, not a silent no-op).
func TestOTLPSinkReceivesSpans(t *testing.T) {
	addr, sink := startOTLPSink(t)
	be := startBackend(t, "b", nil)
	s, _ := startSidecar(t, oneUpstream+"tracing: {otlp_endpoint: "+addr+", sampling_ratio: 1.0}\n", endpointsYAML("api", be.addr, 1))
	for i := 0; i < 10; i++ {
		get(t, h1Client(), "http://"+s.UpstreamAddr("api")+"/")
	}
	if err := s.tp.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10e9, "spans exported", func() bool { return sink.spans.Load() == 10 })
	_, body := get(t, h1Client(), "http://"+s.AdminAddr()+"/metrics")
	if !strings.Contains(body, `sidemesh_tracing_spans_total{fate="exported"} 10`) {
		t.Fatalf("span metrics:\n%s", grepLines(body, "tracing"))
	}
}
