package tracing

import (
	"context"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"
)

const (
	tid   = "4bf92f3577b34da6a3ce929d0e0e4736"
	sid   = "00f067aa0ba902b7"
	tid64 = "a3ce929d0e0e4736" // a 64-bit B3 trace id
)

func TestExtract(t *testing.T) {
	for _, tc := range []struct {
		name        string
		headers     map[string]string
		propagators []string
		wantTrace   string // "" means no remote context
		wantSampled bool
	}{
		{"tracecontext", map[string]string{"traceparent": "00-" + tid + "-" + sid + "-01"}, nil, tid, true},
		{"tracecontext unsampled", map[string]string{"traceparent": "00-" + tid + "-" + sid + "-00"}, nil, tid, false},
		{"b3 single", map[string]string{"b3": tid + "-" + sid + "-1"}, nil, tid, true},
		{"b3 single, b3 injector", map[string]string{"b3": tid + "-" + sid + "-1"}, []string{"b3"}, tid, true},
		{"b3 multi", map[string]string{"X-B3-TraceId": tid, "X-B3-SpanId": sid, "X-B3-Sampled": "1"}, nil, tid, true},
		{"b3 multi, b3 injector", map[string]string{"X-B3-TraceId": tid, "X-B3-SpanId": sid, "X-B3-Sampled": "1"}, []string{"b3"}, tid, true},
		{"b3 multi unsampled", map[string]string{"X-B3-TraceId": tid, "X-B3-SpanId": sid, "X-B3-Sampled": "0"}, nil, tid, false},
		{"b3 multi 64-bit id", map[string]string{"X-B3-TraceId": tid64, "X-B3-SpanId": sid, "X-B3-Sampled": "1"}, nil, "0000000000000000" + tid64, true},
		{"b3 without b3 propagator", map[string]string{"b3": tid + "-" + sid + "-1"}, []string{"tracecontext"}, "", false},
		{"garbage", map[string]string{"traceparent": "00-zz-" + sid + "-01", "b3": "nope"}, nil, "", false},
		{"none", map[string]string{"traceparent": "00-" + tid + "-" + sid + "-01"}, []string{"none"}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, rec := recordingProvider(t, 1, tc.propagators)
			h := http.Header{}
			for k, v := range tc.headers {
				h.Set(k, v)
			}
			sc := trace.SpanContextFromContext(p.Extract(context.Background(), h))
			if tc.wantTrace == "" {
				if sc.IsValid() {
					t.Fatalf("extracted %v, want nothing", sc)
				}
				return
			}
			if got := sc.TraceID().String(); got != tc.wantTrace || sc.SpanID().String() != sid || !sc.IsRemote() || sc.IsSampled() != tc.wantSampled {
				t.Fatalf("extracted trace %s span %s remote %v sampled %v; want %s %s true %v",
					got, sc.SpanID(), sc.IsRemote(), sc.IsSampled(), tc.wantTrace, sid, tc.wantSampled)
			}

			// StartServer parents its span on the same context.
			r := httptest.NewRequest(http.MethodGet, "/x", nil)
			r.Header = h
			_, span := p.StartServer(context.Background(), r)
			EndHTTP(span, 200, OutcomeOK)
			if !tc.wantSampled {
				if span.IsRecording() || len(rec.Ended()) != 0 {
					t.Fatal("an unsampled parent's child was recorded")
				}
				return
			}
			ended := rec.Ended()
			if len(ended) != 1 {
				t.Fatalf("%d spans ended, want 1", len(ended))
			}
			if got := ended[0].Parent(); got.TraceID().String() != tc.wantTrace || got.SpanID().String() != sid {
				t.Fatalf("server span parent %s/%s, want %s/%s", got.TraceID(), got.SpanID(), tc.wantTrace, sid)
			}
		})
	}
}

func TestRequestWithoutContextStartsTrace(t *testing.T) {
	p, rec := recordingProvider(t, 1, nil)
	_, span := p.StartServer(context.Background(), httptest.NewRequest(http.MethodGet, "/", nil))
	EndHTTP(span, 200, OutcomeOK)
	ended := rec.Ended()
	if len(ended) != 1 || !ended[0].SpanContext().TraceID().IsValid() || ended[0].Parent().IsValid() {
		t.Fatalf("ended %d spans; want one root span with a new trace id", len(ended))
	}
}

func TestInject(t *testing.T) {
	incoming := http.Header{}
	incoming.Set("traceparent", "00-"+tid+"-"+sid+"-01")
	incoming.Set("tracestate", "vendor=1")
	incoming.Set("baggage", "tenant=acme")
	// Stale B3 from the app, and a header no propagator owns.
	incoming.Set("b3", tid+"-"+sid+"-1")
	incoming.Set("X-B3-ParentSpanId", "1111111111111111")
	incoming.Set("X-Request-Id", "r1")

	for _, tc := range []struct {
		name        string
		propagators []string
		// want maps header → value; "SPAN" stands for the new span's id,
		// "" for absent.
		want map[string]string
	}{
		{"default: W3C and B3 multi", nil, map[string]string{
			"Traceparent": "00-" + tid + "-SPAN-01", "Tracestate": "vendor=1", "Baggage": "tenant=acme",
			"X-B3-Traceid": tid, "X-B3-Spanid": "SPAN", "X-B3-Sampled": "1",
			"B3": "", "X-B3-Parentspanid": "", "X-Request-Id": "r1",
		}},
		{"b3 single only", []string{"b3"}, map[string]string{
			"B3": tid + "-SPAN-1", "X-B3-Traceid": "", "X-B3-Parentspanid": "",
			// not owned: passed through as the app sent it
			"Traceparent": "00-" + tid + "-" + sid + "-01", "Baggage": "tenant=acme", "X-Request-Id": "r1",
		}},
		{"tracecontext only", []string{"tracecontext"}, map[string]string{
			"Traceparent": "00-" + tid + "-SPAN-01", "Tracestate": "vendor=1",
			"B3": tid + "-" + sid + "-1", "Baggage": "tenant=acme",
		}},
		{"none", []string{"none"}, map[string]string{
			"Traceparent": "00-" + tid + "-" + sid + "-01", "B3": tid + "-" + sid + "-1",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := recordingProvider(t, 0, tc.propagators) // ratio 0: the sampled parent decides
			ctx := p.Extract(context.Background(), incoming)
			ctx, span := p.StartClient(ctx, httptest.NewRequest(http.MethodGet, "/", nil), Upstream{Service: "api"}, 0)
			defer span.End()
			out := incoming.Clone()
			p.Inject(ctx, out)
			spanID := span.SpanContext().SpanID().String()
			for k, want := range tc.want {
				if want == "SPAN" || len(want) > 4 {
					want = replaceSpan(want, spanID)
				}
				if got := out.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
		})
	}
}

func replaceSpan(s, span string) string {
	for i := 0; i+4 <= len(s); i++ {
		if s[i:i+4] == "SPAN" {
			return s[:i] + span + s[i+4:]
		}
	}
	return s
}

func TestInjectUnsampled(t *testing.T) {
	p, _ := recordingProvider(t, 1, nil)
	h := http.Header{}
	h.Set("traceparent", "00-"+tid+"-"+sid+"-00")
	ctx, span := p.StartClient(p.Extract(context.Background(), h), httptest.NewRequest(http.MethodGet, "/", nil), Upstream{}, 0)
	defer span.End()
	p.Inject(ctx, h)
	if span.IsRecording() {
		t.Fatal("child of an unsampled parent is recording")
	}
	// The decision travels on, and the trace id with it.
	if got := h.Get("X-B3-Sampled"); got != "0" {
		t.Errorf("X-B3-Sampled = %q, want 0", got)
	}
	if got := h.Get("traceparent"); got[len(got)-2:] != "00" || got[3:35] != tid {
		t.Errorf("traceparent = %q, want trace %s flags 00", got, tid)
	}
}

func TestBaggageRoundTrip(t *testing.T) {
	p, _ := recordingProvider(t, 1, nil)
	in := http.Header{}
	in.Set("baggage", "tenant=acme,region=eu")
	ctx := p.Extract(context.Background(), in)
	if got := baggage.FromContext(ctx).Member("tenant").Value(); got != "acme" {
		t.Fatalf("baggage tenant = %q, want acme", got)
	}
	out := http.Header{}
	p.Inject(ctx, out)
	if got, err := baggage.Parse(out.Get("baggage")); err != nil || got.Member("region").Value() != "eu" {
		t.Fatalf("injected baggage %q (%v), want region=eu", out.Get("baggage"), err)
	}
}

func TestDisabledProvider(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    *Provider
	}{
		{"nil", nil},
		{"Setup(nil)", func() *Provider {
			p, err := Setup(context.Background(), nil, Resource{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			return p
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.p
			h := http.Header{}
			h.Set("traceparent", "00-"+tid+"-"+sid+"-01")
			before := h.Clone()
			ctx := context.Background()
			if got := p.Extract(ctx, h); got != ctx {
				t.Error("Extract changed the context")
			}
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			sctx, span := p.StartServer(ctx, r)
			if sctx != ctx || span.IsRecording() || span.SpanContext().IsValid() {
				t.Error("StartServer made a span")
			}
			_, span = p.StartClient(ctx, r, Upstream{}, 0)
			SetEndpoint(span, "127.0.0.1:1")
			EndHTTP(span, 200, OutcomeOK)
			_, span = p.StartTCP(ctx, Upstream{})
			EndTCP(span, 1, 2, OutcomeOK)
			p.Inject(ctx, h)
			if !reflect.DeepEqual(h, before) {
				t.Errorf("Inject changed the headers: %v", h)
			}
			if p.Enabled() {
				t.Error("Enabled() = true")
			}
			if e, d := p.Stats(); e != 0 || d != 0 {
				t.Errorf("Stats() = %d, %d", e, d)
			}
			if p.ForceFlush(ctx) != nil || p.Shutdown(ctx) != nil {
				t.Error("ForceFlush or Shutdown failed")
			}
			if p.TracerProvider() == nil || p.Propagator() == nil {
				t.Error("nil TracerProvider or Propagator")
			}
		})
	}
}

func TestSetupDisabledByEnv(t *testing.T) {
	t.Setenv("OTEL_SDK_DISABLED", "true")
	p, err := Setup(context.Background(), &Config{OTLPEndpoint: "127.0.0.1:4317"}, Resource{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Enabled() {
		t.Fatal("OTEL_SDK_DISABLED=true left tracing on")
	}
}

func TestHeaderCarrierCanonical(t *testing.T) {
	for _, k := range []string{"traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "x-b3-spanid",
		"x-b3-sampled", "x-b3-flags", "x-b3-parentspanid", "x-other"} {
		if got, want := canonicalKey(k), http.CanonicalHeaderKey(k); got != want {
			t.Errorf("canonicalKey(%q) = %q, want %q", k, got, want)
		}
	}
	h := http.Header{}
	headerCarrier(h).Set("x-b3-traceid", "v")
	if h.Get("X-B3-TraceId") != "v" || headerCarrier(h).Get("x-b3-traceid") != "v" || len(headerCarrier(h).Keys()) != 1 {
		t.Fatalf("carrier round trip: %v", h)
	}
}

// TestExtractPriority: with W3C and B3 headers naming different traces, the
// propagator listed first wins.
func TestExtractPriority(t *testing.T) {
	const otherTrace, otherSpan = "11111111111111112222222222222222", "3333333333333333"
	h := http.Header{}
	h.Set("traceparent", "00-"+tid+"-"+sid+"-01")
	h.Set("X-B3-TraceId", otherTrace)
	h.Set("X-B3-SpanId", otherSpan)
	h.Set("X-B3-Sampled", "1")
	for _, tc := range []struct {
		propagators []string
		want        string
	}{
		{[]string{"tracecontext", "baggage", "b3multi"}, tid},
		{[]string{"b3multi", "tracecontext"}, otherTrace},
		{[]string{"b3", "tracecontext"}, otherTrace},
	} {
		p, _ := recordingProvider(t, 1, tc.propagators)
		if got := trace.SpanContextFromContext(p.Extract(context.Background(), h)).TraceID().String(); got != tc.want {
			t.Errorf("%v: extracted trace %s, want %s", tc.propagators, got, tc.want)
		}
	}
}

// TestInjectFields: the field-list form leaves the same headers as Inject.
func TestInjectFields(t *testing.T) {
	incoming := http.Header{}
	incoming.Set("traceparent", "00-"+tid+"-"+sid+"-01")
	incoming.Set("b3", tid+"-"+sid+"-1")
	incoming.Set("X-Request-Id", "r1")
	p, _ := recordingProvider(t, 0, nil)
	ctx := p.Extract(context.Background(), incoming)
	ctx, span := p.StartClient(ctx, httptest.NewRequest(http.MethodGet, "/", nil), Upstream{Service: "api"}, 0)
	defer span.End()
	want := incoming.Clone()
	p.Inject(ctx, want)

	fields := map[string]string{}
	for k, v := range incoming {
		fields[strings.ToLower(k)] = v[0]
	}
	p.InjectFields(ctx, func(name string) { delete(fields, name) }, func(name, value string) { fields[name] = value })
	if len(fields) != len(want) {
		t.Fatalf("fields %v, want %v", fields, want)
	}
	for k, v := range want {
		if fields[strings.ToLower(k)] != v[0] {
			t.Errorf("%s = %q, want %q", strings.ToLower(k), fields[strings.ToLower(k)], v[0])
		}
	}
	// Off: nothing changes.
	var off *Provider
	off.InjectFields(ctx, func(string) { t.Fatal("del called with tracing off") }, func(string, string) { t.Fatal("set called with tracing off") })
}
