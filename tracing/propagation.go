package tracing

import (
	"context"
	"fmt"
	"net/http"
	"net/textproto"
	"slices"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/propagation"
)

// newPropagator builds the composite propagator for names (already
// validated) and the header keys, canonical form, that its Inject may write.
// The list order is the extraction priority: when a request carries both W3C
// and B3 headers, the context of the one listed first wins (so tracestate
// survives behind a stale B3 header with the default list).
func newPropagator(names []string) (propagation.TextMapPropagator, []string, error) {
	var (
		props  []propagation.TextMapPropagator
		fields []string
	)
	for _, n := range names {
		var p propagation.TextMapPropagator
		switch n {
		case PropagatorTraceContext:
			p = propagation.TraceContext{}
		case PropagatorBaggage:
			p = propagation.Baggage{}
		case PropagatorB3:
			p = b3.New(b3.WithInjectEncoding(b3.B3SingleHeader))
		case PropagatorB3Multi:
			p = b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader))
		case PropagatorNone:
			continue
		default:
			return nil, nil, fmt.Errorf("%w: unknown propagator %q", ErrInvalidConfig, n)
		}
		props = append(props, p)
		fields = append(fields, p.Fields()...)
		if n == PropagatorB3 || n == PropagatorB3Multi {
			// Whichever B3 form is injected, a stale header of the other form
			// (or a parent span id) from the incoming request must not reach
			// the upstream beside the new one.
			fields = append(fields, "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags", "x-b3-parentspanid")
		}
	}
	owned := make([]string, 0, len(fields))
	for _, f := range fields {
		if k := canonicalKey(f); !slices.Contains(owned, k) {
			owned = append(owned, k)
		}
	}
	// A composite extracts in order, each propagator overwriting what the
	// previous found; reversed, the first listed has the last word.
	reversed := slices.Clone(props)
	slices.Reverse(reversed)
	return prioritized{
		TextMapPropagator: propagation.NewCompositeTextMapPropagator(props...),
		extract:           propagation.NewCompositeTextMapPropagator(reversed...),
	}, owned, nil
}

// prioritized injects with every propagator in list order and extracts so
// that the first listed propagator finding a context wins.
type prioritized struct {
	propagation.TextMapPropagator
	extract propagation.TextMapPropagator
}

func (p prioritized) Extract(ctx context.Context, c propagation.TextMapCarrier) context.Context {
	return p.extract.Extract(ctx, c)
}

// headerCarrier adapts http.Header to propagation.TextMapCarrier like
// propagation.HeaderCarrier, but maps the lower-case names the propagators use
// to their canonical form without allocating (http.Header.Get canonicalises
// by allocating a new string for every name net/textproto does not know).
// HTTP/1 and HTTP/2 servers in net/http store canonical keys.
type headerCarrier http.Header

var _ propagation.TextMapCarrier = headerCarrier(nil)

func (h headerCarrier) Get(key string) string {
	if v := h[canonicalKey(key)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (h headerCarrier) Set(key, value string) { h[canonicalKey(key)] = []string{value} }

func (h headerCarrier) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

func canonicalKey(k string) string {
	switch k {
	case "traceparent":
		return "Traceparent"
	case "tracestate":
		return "Tracestate"
	case "baggage":
		return "Baggage"
	case "b3":
		return "B3"
	case "x-b3-traceid":
		return "X-B3-Traceid"
	case "x-b3-spanid":
		return "X-B3-Spanid"
	case "x-b3-sampled":
		return "X-B3-Sampled"
	case "x-b3-flags":
		return "X-B3-Flags"
	case "x-b3-parentspanid":
		return "X-B3-Parentspanid"
	}
	return textproto.CanonicalMIMEHeaderKey(k)
}
