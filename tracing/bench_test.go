package tracing

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// discardExporter exports nowhere, so that benchmarks measure the request
// path and the batcher, not a network.
type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

func benchProvider(b *testing.B, ratio float64) *Provider {
	if ratio < 0 {
		return nil // tracing off
	}
	cfg := Config{SamplingRatio: &ratio}
	cfg.setDefaults(func(string) string { return "" })
	prop, owned, err := newPropagator(cfg.Propagators)
	if err != nil {
		b.Fatal(err)
	}
	bat := newBatcher(discardExporter{}, &cfg, slog.New(slog.DiscardHandler))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(Sampler(ratio)), sdktrace.WithSpanProcessor(bat))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return newProvider(tp, prop, owned, bat)
}

var benchCases = []struct {
	name  string
	ratio float64
}{
	{"off", -1},
	{"sampled-1.0", 1},
	{"sampled-0.01", 0.01},
}

// BenchmarkClientSpan is the outbound request path's tracing work: extract
// the app's context, one attempt span with its endpoint, inject, end.
func BenchmarkClientSpan(b *testing.B) {
	for _, bc := range benchCases {
		b.Run(bc.name, func(b *testing.B) {
			p := benchProvider(b, bc.ratio)
			up := Upstream{Service: "api", LBPolicy: "round_robin"}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				r := httptest.NewRequest(http.MethodGet, "/items", nil)
				out := http.Header{}
				for pb.Next() {
					ctx := p.Extract(context.Background(), r.Header)
					actx, span := p.StartClient(ctx, r, up, 0)
					SetEndpoint(span, "127.0.0.1:7001")
					p.Inject(actx, out)
					EndHTTP(span, 200, OutcomeOK)
				}
			})
		})
	}
}

// BenchmarkServerSpan is the inbound path with a sampled W3C parent (the
// parent's decision is kept whatever the ratio).
func BenchmarkServerSpan(b *testing.B) {
	for _, bc := range benchCases {
		b.Run(bc.name, func(b *testing.B) {
			p := benchProvider(b, bc.ratio)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				r := httptest.NewRequest(http.MethodGet, "/items", nil)
				r.Header.Set("traceparent", "00-"+tid+"-"+sid+"-01")
				out := http.Header{}
				for pb.Next() {
					ctx, span := p.StartServer(context.Background(), r)
					p.Inject(ctx, out)
					EndHTTP(span, 200, OutcomeOK)
				}
			})
		})
	}
}
