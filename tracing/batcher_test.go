package tracing

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// fakeExporter records batches. With block set, an export waits for its
// context to end and fails; with fail set, it fails at once.
type fakeExporter struct {
	mu       sync.Mutex
	batches  []int
	block    bool
	fail     bool
	shutdown int
}

var errExport = errors.New("collector says no")

func (e *fakeExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.mu.Lock()
	block, fail := e.block, e.fail
	e.mu.Unlock()
	if block {
		<-ctx.Done()
		return ctx.Err()
	}
	if fail {
		return errExport
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.batches = append(e.batches, len(spans))
	return nil
}

func (e *fakeExporter) Shutdown(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.shutdown++
	return nil
}

func (e *fakeExporter) set(block, fail bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.block, e.fail = block, fail
}

func (e *fakeExporter) got() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]int(nil), e.batches...)
}

func testSpan(sampled bool) sdktrace.ReadOnlySpan {
	var flags trace.TraceFlags
	if sampled {
		flags = trace.FlagsSampled
	}
	return tracetest.SpanStub{
		Name: "s",
		SpanContext: trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: flags,
		}),
	}.Snapshot()
}

func testBatcher(exp sdktrace.SpanExporter, queue, batch int, log *slog.Logger) *batcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return newBatcher(exp, &Config{
		MaxQueueSize: queue, MaxExportBatchSize: batch,
		BatchTimeout: 5 * time.Second, ExportTimeout: 10 * time.Second,
	}, log)
}

func end(b *batcher, n int) {
	for range n {
		b.OnEnd(testSpan(true))
	}
}

func checkStats(t *testing.T, b *batcher, exported, dropped uint64) {
	t.Helper()
	if e, d := b.stats(); e != exported || d != dropped {
		t.Fatalf("stats: exported %d dropped %d, want %d and %d", e, d, exported, dropped)
	}
}

func TestBatcherBatchTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exp := &fakeExporter{}
		b := testBatcher(exp, 100, 10, nil)
		defer b.Shutdown(context.Background())
		end(b, 3)
		time.Sleep(5*time.Second - time.Nanosecond)
		synctest.Wait()
		if got := exp.got(); len(got) != 0 {
			t.Fatalf("exported %v before the batch timeout", got)
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if got := exp.got(); !slices.Equal(got, []int{3}) {
			t.Fatalf("batches %v, want [3]", got)
		}
		checkStats(t, b, 3, 0)
	})
}

func TestBatcherMaxBatchSize(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exp := &fakeExporter{}
		b := testBatcher(exp, 100, 4, nil)
		defer b.Shutdown(context.Background())
		end(b, 10)
		synctest.Wait() // full batches go at once
		if got := exp.got(); !slices.Equal(got, []int{4, 4}) {
			t.Fatalf("batches %v, want [4 4]", got)
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if got := exp.got(); !slices.Equal(got, []int{4, 4, 2}) {
			t.Fatalf("batches %v, want [4 4 2]", got)
		}
		checkStats(t, b, 10, 0)
	})
}

func TestBatcherUnsampledIgnored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exp := &fakeExporter{}
		b := testBatcher(exp, 100, 10, nil)
		for range 5 {
			b.OnEnd(testSpan(false))
		}
		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		checkStats(t, b, 0, 0)
		if got := exp.got(); len(got) != 0 {
			t.Fatalf("exported unsampled spans: %v", got)
		}
	})
}

// TestBatcherQueueFullNeverBlocks: with the collector hanging, OnEnd keeps
// returning at once (synctest would report a deadlock otherwise) and every
// span is accounted for as dropped.
func TestBatcherQueueFullNeverBlocks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exp := &fakeExporter{block: true}
		b := testBatcher(exp, 5, 1, nil)
		defer b.Shutdown(context.Background())
		end(b, 1)
		synctest.Wait() // the loop took it and hangs in the export
		end(b, 5)       // fills the queue
		end(b, 10)      // dropped at once
		checkStats(t, b, 0, 10)
		// Each hanging export costs one export timeout: 6 spans, batch size 1.
		time.Sleep(6 * 10 * time.Second)
		synctest.Wait()
		checkStats(t, b, 0, 16)
	})
}

func TestBatcherExportFailureCounted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs bytes.Buffer
		exp := &fakeExporter{fail: true}
		b := testBatcher(exp, 100, 3, slog.New(slog.NewTextHandler(&logs, nil)))
		defer b.Shutdown(context.Background())
		end(b, 7)
		if err := b.ForceFlush(context.Background()); err != nil {
			t.Fatal(err)
		}
		checkStats(t, b, 0, 7)

		exp.set(false, false)
		end(b, 2)
		if err := b.ForceFlush(context.Background()); err != nil {
			t.Fatal(err)
		}
		checkStats(t, b, 2, 7)
		// Three failed batches, one warning; one recovery line.
		if n := strings.Count(logs.String(), "span export failed"); n != 1 {
			t.Errorf("%d failure log lines, want 1:\n%s", n, logs.String())
		}
		if n := strings.Count(logs.String(), "span export recovered"); n != 1 {
			t.Errorf("%d recovery log lines, want 1:\n%s", n, logs.String())
		}
	})
}

func TestBatcherForceFlushAndShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exp := &fakeExporter{}
		b := testBatcher(exp, 100, 10, nil)
		end(b, 4)
		if err := b.ForceFlush(context.Background()); err != nil {
			t.Fatal(err)
		}
		checkStats(t, b, 4, 0) // without waiting for the batch timeout
		end(b, 3)
		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		checkStats(t, b, 7, 0) // Shutdown exported what was queued
		end(b, 2)              // after Shutdown: dropped
		checkStats(t, b, 7, 2)
		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatalf("second Shutdown: %v", err)
		}
		if err := b.ForceFlush(context.Background()); err != nil {
			t.Fatalf("ForceFlush after Shutdown: %v", err)
		}
		if exp.shutdown != 1 {
			t.Fatalf("exporter shut down %d times, want 1", exp.shutdown)
		}
	})
}

// TestBatcherShutdownDeadline: a hanging collector cannot hold Shutdown past
// its context; what was in flight or queued counts as dropped.
func TestBatcherShutdownDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exp := &fakeExporter{block: true}
		b := testBatcher(exp, 100, 2, nil)
		end(b, 5)
		synctest.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		if err := b.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want deadline exceeded", err)
		}
		if d := time.Since(start); d != time.Second {
			t.Fatalf("Shutdown took %v, want 1s", d)
		}
		checkStats(t, b, 0, 5)
	})
}
