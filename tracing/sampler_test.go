package tracing

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func TestSampler(t *testing.T) {
	for _, tc := range []struct {
		name        string
		ratio       float64
		traceparent string // "" means the request starts a trace
		wantSampled bool
	}{
		{"root, ratio 1", 1, "", true},
		{"root, ratio 0", 0, "", false},
		{"sampled parent, ratio 0", 0, "00-" + tid + "-" + sid + "-01", true},
		{"unsampled parent, ratio 1", 1, "00-" + tid + "-" + sid + "-00", false},
		{"sampled parent, ratio 1", 1, "00-" + tid + "-" + sid + "-01", true},
		{"unsampled parent, ratio 0", 0, "00-" + tid + "-" + sid + "-00", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, rec := recordingProvider(t, tc.ratio, nil)
			const n = 100
			for range n {
				r := httptest.NewRequest(http.MethodGet, "/", nil)
				if tc.traceparent != "" {
					r.Header.Set("traceparent", tc.traceparent)
				}
				_, span := p.StartServer(context.Background(), r)
				if got := span.SpanContext().IsSampled(); got != tc.wantSampled {
					t.Fatalf("sampled = %v, want %v", got, tc.wantSampled)
				}
				EndHTTP(span, 200, OutcomeOK)
			}
			want := 0
			if tc.wantSampled {
				want = n
			}
			if got := len(rec.Ended()); got != want {
				t.Fatalf("%d spans recorded, want %d", got, want)
			}
		})
	}
}

// TestSamplerRatio: with trace ids from a fixed seed, the share of root
// spans sampled is the ratio within 5 standard deviations of a binomial.
func TestSamplerRatio(t *testing.T) {
	const n = 20000
	for _, ratio := range []float64{0.01, 0.25, 0.5} {
		p, _ := recordingProvider(t, ratio, nil)
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		sampled := 0
		for range n {
			_, span := p.StartClient(context.Background(), r, Upstream{Service: "api"}, 0)
			if span.SpanContext().IsSampled() {
				sampled++
			}
			span.End()
		}
		mean, sd := n*ratio, math.Sqrt(n*ratio*(1-ratio))
		if math.Abs(float64(sampled)-mean) > 5*sd {
			t.Errorf("ratio %v: %d of %d sampled, want %.0f ± %.0f", ratio, sampled, n, mean, 5*sd)
		}
	}
}

// TestSamplerAgreesAcrossHops: the ratio decision depends on the trace id
// only, so two sidecars with the same ratio agree on a root decision.
func TestSamplerAgreesAcrossHops(t *testing.T) {
	s := Sampler(0.5)
	ids := newSeededIDs(7)
	for range 1000 {
		traceID, _ := ids.NewIDs(context.Background())
		a := s.ShouldSample(samplingParams(traceID))
		b := s.ShouldSample(samplingParams(traceID))
		if a.Decision != b.Decision {
			t.Fatalf("trace %s: decisions %v and %v", traceID, a.Decision, b.Decision)
		}
	}
}

func samplingParams(id trace.TraceID) sdktrace.SamplingParameters {
	return sdktrace.SamplingParameters{TraceID: id, Name: "GET", Kind: trace.SpanKindClient}
}
