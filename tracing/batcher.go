package tracing

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// batcher is a sdktrace.SpanProcessor that queues ended spans in a bounded
// channel and exports them in batches from one goroutine, like the SDK's
// batch span processor (OpenTelemetry SDK spec, "Batching processor"), with
// two differences: every span that is not exported is counted (the SDK keeps
// its drop count private), and an export is never retried, so a slow or dead
// collector costs at most one export timeout per batch while the queue
// absorbs or drops what arrives meanwhile.
//
// Concurrency: OnEnd may be called from any goroutine and never blocks: it is
// one atomic load and one non-blocking channel send. Exports, and so all calls
// to the exporter except Shutdown, happen on the batcher's goroutine.
// ForceFlush and Shutdown may be called from any goroutine.
type batcher struct {
	exp      sdktrace.SpanExporter
	queue    chan sdktrace.ReadOnlySpan
	maxBatch int
	delay    time.Duration // BatchTimeout
	timeout  time.Duration // ExportTimeout
	log      *slog.Logger

	exported      atomic.Uint64
	droppedQueue  atomic.Uint64 // queue full, or ended after Shutdown
	droppedExport atomic.Uint64 // in a failed export

	stopped       atomic.Bool
	stopOnce      sync.Once
	expShutdown   sync.Once
	flushReq      chan chan struct{}
	stop          chan struct{}
	done          chan struct{}
	exportCtx     context.Context // cancelled when Shutdown's context expires
	cancelExports context.CancelFunc

	// Loop goroutine only: state transitions worth one log line each.
	failing       bool
	queueFull     bool
	lastQueueDrop uint64
}

var _ sdktrace.SpanProcessor = (*batcher)(nil)

// newBatcher starts the export goroutine; Shutdown stops it.
func newBatcher(exp sdktrace.SpanExporter, cfg *Config, log *slog.Logger) *batcher {
	ctx, cancel := context.WithCancel(context.Background())
	b := &batcher{
		exp:           exp,
		queue:         make(chan sdktrace.ReadOnlySpan, cfg.MaxQueueSize),
		maxBatch:      cfg.MaxExportBatchSize,
		delay:         cfg.BatchTimeout,
		timeout:       cfg.ExportTimeout,
		log:           log,
		flushReq:      make(chan chan struct{}),
		stop:          make(chan struct{}),
		done:          make(chan struct{}),
		exportCtx:     ctx,
		cancelExports: cancel,
	}
	go b.run()
	return b
}

// OnStart does nothing.
func (*batcher) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd queues a sampled span, or counts it as dropped when the queue is full
// or the batcher is shut down.
func (b *batcher) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return // recorded but not sampled: never exported, never counted
	}
	if b.stopped.Load() {
		b.droppedQueue.Add(1)
		return
	}
	select {
	case b.queue <- s:
	default:
		b.droppedQueue.Add(1)
	}
}

// stats returns the spans exported and the spans dropped so far.
func (b *batcher) stats() (exported, dropped uint64) {
	return b.exported.Load(), b.droppedQueue.Load() + b.droppedExport.Load()
}

// ForceFlush exports every span queued before the call, and returns when that
// is done or ctx expires.
func (b *batcher) ForceFlush(ctx context.Context) error {
	if b.stopped.Load() {
		return nil
	}
	ch := make(chan struct{})
	select {
	case b.flushReq <- ch:
	case <-b.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ch:
		return nil
	case <-b.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown exports what is queued and shuts the exporter down. If ctx expires
// first, exports in flight are cancelled (their spans count as dropped) and
// ctx's error is returned. Spans ended after Shutdown began are dropped.
func (b *batcher) Shutdown(ctx context.Context) error {
	b.stopOnce.Do(func() {
		b.stopped.Store(true)
		close(b.stop)
	})
	var err error
	select {
	case <-b.done:
	case <-ctx.Done():
		err = ctx.Err()
		b.cancelExports()
		<-b.done
	}
	b.cancelExports()
	// Spans whose OnEnd raced with the final drain.
	for n := len(b.queue); n > 0; n-- {
		select {
		case <-b.queue:
			b.droppedQueue.Add(1)
		default:
		}
	}
	b.expShutdown.Do(func() { err = errors.Join(err, b.exp.Shutdown(ctx)) })
	return err
}

func (b *batcher) run() {
	defer close(b.done)
	batch := make([]sdktrace.ReadOnlySpan, 0, b.maxBatch)
	timer := time.NewTimer(b.delay)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case s := <-b.queue:
			batch = append(batch, s)
			if len(batch) == 1 {
				timer.Reset(b.delay)
			}
			if len(batch) >= b.maxBatch {
				timer.Stop()
				batch = b.export(batch)
			}
		case <-timer.C:
			batch = b.export(batch)
		case ch := <-b.flushReq:
			timer.Stop()
			batch = b.drain(batch)
			close(ch)
		case <-b.stop:
			b.drain(batch)
			return
		}
	}
}

// drain exports batch and everything queued at the time of the call.
func (b *batcher) drain(batch []sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	for n := len(b.queue); n > 0; n-- {
		batch = append(batch, <-b.queue) // only this goroutine receives
		if len(batch) >= b.maxBatch {
			batch = b.export(batch)
		}
	}
	return b.export(batch)
}

func (b *batcher) export(batch []sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	b.noteQueueDrops()
	if len(batch) == 0 {
		return batch
	}
	ctx, cancel := context.WithTimeout(b.exportCtx, b.timeout)
	err := b.exp.ExportSpans(ctx, batch)
	cancel()
	n := uint64(len(batch))
	if err != nil {
		b.droppedExport.Add(n)
		if !b.failing {
			b.failing = true
			b.log.Warn("span export failed; dropping spans until the collector answers", "spans", n, "error", err)
		}
	} else {
		b.exported.Add(n)
		if b.failing {
			b.failing = false
			b.log.Info("span export recovered", "dropped_total", b.droppedExport.Load()+b.droppedQueue.Load())
		}
	}
	clear(batch) // let the spans be collected
	return batch[:0]
}

func (b *batcher) noteQueueDrops() {
	d := b.droppedQueue.Load()
	switch {
	case d > b.lastQueueDrop && !b.queueFull:
		b.queueFull = true
		b.log.Warn("span queue full; dropping spans", "max_queue_size", cap(b.queue))
	case d == b.lastQueueDrop && b.queueFull:
		b.queueFull = false
		b.log.Info("span queue has room again", "dropped_total", d+b.droppedExport.Load())
	}
	b.lastQueueDrop = d
}
