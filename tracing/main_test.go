package tracing

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// seededIDs is an sdktrace.IDGenerator with a fixed seed, so that sampling
// by trace id is reproducible.
type seededIDs struct {
	mu  sync.Mutex
	rng *rand.Rand
}

func newSeededIDs(seed uint64) *seededIDs {
	return &seededIDs{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (g *seededIDs) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var tid trace.TraceID
	for i := range tid {
		tid[i] = byte(g.rng.Uint32())
	}
	return tid, g.spanID()
}

func (g *seededIDs) NewSpanID(context.Context, trace.TraceID) trace.SpanID {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.spanID()
}

func (g *seededIDs) spanID() trace.SpanID {
	var sid trace.SpanID
	for i := range sid {
		sid[i] = byte(g.rng.Uint32())
	}
	sid[0] |= 1 // never the invalid all-zero id
	return sid
}

// recordingProvider returns an enabled Provider whose spans go to a
// recorder instead of an exporter, with the given sampling ratio and
// propagators (nil: the defaults).
func recordingProvider(t testing.TB, ratio float64, propagators []string) (*Provider, *tracetest.SpanRecorder) {
	t.Helper()
	if propagators == nil {
		propagators = DefaultPropagators
	}
	prop, owned, err := newPropagator(propagators)
	if err != nil {
		t.Fatal(err)
	}
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(Sampler(ratio)),
		sdktrace.WithSpanProcessor(rec),
		sdktrace.WithIDGenerator(newSeededIDs(1)),
	)
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return newProvider(tp, prop, owned, nil), rec
}
