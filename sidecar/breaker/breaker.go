package breaker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
)

// Threshold names a circuit-breaker limit, by its Envoy config key.
type Threshold string

const (
	MaxConnections     Threshold = "max_connections"
	MaxPendingRequests Threshold = "max_pending_requests"
	MaxRequests        Threshold = "max_requests"
	MaxRetries         Threshold = "max_retries"
	// RetryBudget is the retry limit when retry_budget is configured.
	RetryBudget Threshold = "retry_budget"
)

// ErrOverflow matches (errors.Is) every Overflow.
var ErrOverflow = errors.New("breaker: overflow")

// Overflow is the error of an acquisition refused because a threshold is
// reached. It names the threshold, so that the 503 the proxy answers can
// say which (Envoy's bare "UO" flag does not; envoyproxy/envoy#11908).
type Overflow struct {
	Threshold Threshold
	// Limit is the threshold's value when the acquisition was refused (for
	// retry_budget, the budget computed at that moment).
	Limit uint64
}

// Error reads like "breaker: max_requests (1024) overflowed".
func (e Overflow) Error() string {
	return "breaker: " + string(e.Threshold) + " (" + strconv.FormatUint(e.Limit, 10) + ") overflowed"
}

// Is reports whether target is ErrOverflow.
func (e Overflow) Is(target error) bool { return target == ErrOverflow }

// Breaker enforces one upstream's circuit breakers with lock-free counters:
// connections, pending requests (waiting for a connection), requests and
// retries. Every Acquire that succeeds must be paired with exactly one
// Release of the same kind; a Release without an Acquire panics.
//
// Concurrency: all methods are safe for concurrent use. Acquire* and
// Release* take no lock and allocate nothing, except that AcquireConn takes
// a mutex and allocates when it has to wait, and an overflow of
// retry_budget allocates its error.
type Breaker struct {
	conns, pending, requests, retries counter

	maxConns, maxPending, maxRequests, maxRetries int64
	budget                                        bool
	budgetFraction                                float64 // budget_percent / 100
	minRetries                                    int64

	overflows [numThresholds]atomic.Uint64
	errs      [numThresholds]error // the fixed thresholds' Overflow errors

	nwait   atomic.Int64 // len(waiters), readable without mu
	mu      sync.Mutex
	waiters []chan struct{} // AcquireConn callers waiting for a slot, oldest first
}

// Threshold indexes.
const (
	iConns = iota
	iPending
	iRequests
	iRetries
	numThresholds
)

// counter is an atomic counter on its own cache line: requests is written
// by every request, and should not slow down readers of the others.
type counter struct {
	atomic.Int64
	_ [56]byte
}

// New returns a breaker for cfg, which should have passed Validate; unset
// keys take their defaults.
func New(cfg Config) *Breaker {
	cfg.SetDefaults()
	b := &Breaker{
		maxConns:    int64(*cfg.MaxConnections),
		maxPending:  int64(*cfg.MaxPendingRequests),
		maxRequests: int64(*cfg.MaxRequests),
		maxRetries:  int64(*cfg.MaxRetries),
	}
	if rb := cfg.RetryBudget; rb != nil {
		b.budget = true
		b.budgetFraction = min(max(*rb.BudgetPercent, 0), 100) / 100
		b.minRetries = int64(*rb.MinRetryConcurrency)
	}
	b.errs[iConns] = Overflow{MaxConnections, uint64(b.maxConns)}
	b.errs[iPending] = Overflow{MaxPendingRequests, uint64(b.maxPending)}
	b.errs[iRequests] = Overflow{MaxRequests, uint64(b.maxRequests)}
	b.errs[iRetries] = Overflow{MaxRetries, uint64(b.maxRetries)}
	return b
}

// acquire takes one unit of c if fewer than limit are taken (Envoy's
// canCreate: count < max). A compare-and-swap loop rather than add-then-undo,
// so that concurrent callers at the limit never refuse each other
// spuriously and the count never exceeds the limit.
func acquire(c *counter, limit int64) bool {
	for {
		n := c.Load()
		if n >= limit {
			return false
		}
		if c.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func release(c *counter, what string) {
	if c.Add(-1) < 0 {
		panic("breaker: " + what + " without a matching Acquire")
	}
}

func (b *Breaker) overflow(i int) error {
	b.overflows[i].Add(1)
	return b.errs[i]
}

// AcquireRequest takes a request slot (max_requests), or returns an
// Overflow. Every attempt sent upstream holds one, retries included.
func (b *Breaker) AcquireRequest() error {
	if acquire(&b.requests, b.maxRequests) {
		return nil
	}
	return b.overflow(iRequests)
}

// ReleaseRequest returns a request slot.
func (b *Breaker) ReleaseRequest() { release(&b.requests, "ReleaseRequest") }

// AcquirePending takes a pending-request slot (max_pending_requests), held
// while a request waits for a connection; or returns an Overflow at once.
func (b *Breaker) AcquirePending() error {
	if acquire(&b.pending, b.maxPending) {
		return nil
	}
	return b.overflow(iPending)
}

// ReleasePending returns a pending-request slot.
func (b *Breaker) ReleasePending() { release(&b.pending, "ReleasePending") }

// AcquireRetry takes a retry slot, held for the duration of one retry
// attempt, or returns an Overflow. The limit is max_retries, or with a
// retry budget max(min_retry_concurrency, budget_percent% × (requests +
// pending requests)) at the moment of the call, truncated, as in Envoy's
// RetryBudgetImpl::max.
func (b *Breaker) AcquireRetry() error {
	if !b.budget {
		if acquire(&b.retries, b.maxRetries) {
			return nil
		}
		return b.overflow(iRetries)
	}
	for {
		n, limit := b.retries.Load(), b.retryBudget()
		if n >= limit {
			b.overflows[iRetries].Add(1)
			return Overflow{RetryBudget, uint64(limit)}
		}
		if b.retries.CompareAndSwap(n, n+1) {
			return nil
		}
	}
}

func (b *Breaker) retryBudget() int64 {
	active := b.requests.Load() + b.pending.Load()
	return max(b.minRetries, int64(b.budgetFraction*float64(active)))
}

// ReleaseRetry returns a retry slot.
func (b *Breaker) ReleaseRetry() { release(&b.retries, "ReleaseRetry") }

// TryAcquireConn takes a connection slot (max_connections) without waiting,
// or returns an Overflow.
func (b *Breaker) TryAcquireConn() error {
	if acquire(&b.conns, b.maxConns) {
		return nil
	}
	return b.overflow(iConns)
}

// AcquireConn takes a connection slot, waiting for one to be released if
// max_connections is reached (which counts one overflow, like Envoy's
// upstream_cx_overflow). The wait ends with ctx: the error then wraps
// ctx's cause (errors.Is(err, context.DeadlineExceeded)) and is not an
// Overflow. The caller bounds how many wait by holding a pending slot
// (AcquirePending) meanwhile.
func (b *Breaker) AcquireConn(ctx context.Context) error {
	if acquire(&b.conns, b.maxConns) {
		return nil
	}
	b.overflows[iConns].Add(1)
	if testHookBeforeEnqueue != nil {
		testHookBeforeEnqueue()
	}
	w := make(chan struct{}, 1)
	for {
		b.enqueue(w)
		// A release between the failed attempt and enqueue saw no waiter
		// to wake; this second attempt catches it. (The releaser decrements
		// before it reads nwait; we increment nwait before we read the
		// count: one of the two sees the other.)
		if acquire(&b.conns, b.maxConns) {
			b.leave(w)
			return nil
		}
		select {
		case <-w:
			// Woken by a release: compete for the slot. A fast-path caller
			// may win it, in which case wait again.
			if acquire(&b.conns, b.maxConns) {
				return nil
			}
		case <-ctx.Done():
			b.leave(w)
			return fmt.Errorf("breaker: waiting for a %s (%d) slot: %w", MaxConnections, b.maxConns, context.Cause(ctx))
		}
	}
}

// testHookBeforeEnqueue, when set by a test, runs between AcquireConn's
// failed first attempt and its enqueueing.
var testHookBeforeEnqueue func()

// ReleaseConn returns a connection slot and wakes the longest waiter of
// AcquireConn, if any.
func (b *Breaker) ReleaseConn() {
	release(&b.conns, "ReleaseConn")
	if b.nwait.Load() > 0 {
		b.wakeOne()
	}
}

func (b *Breaker) enqueue(w chan struct{}) {
	b.mu.Lock()
	b.waiters = append(b.waiters, w)
	b.nwait.Add(1)
	b.mu.Unlock()
}

// leave removes w from the queue. If w is no longer there, a release has
// already woken it and w will not use that wake-up: pass it on, or a slot
// could stay free while others wait.
func (b *Breaker) leave(w chan struct{}) {
	b.mu.Lock()
	i := slices.Index(b.waiters, w)
	if i >= 0 {
		b.waiters = slices.Delete(b.waiters, i, i+1)
		b.nwait.Add(-1)
	}
	b.mu.Unlock()
	if i < 0 {
		b.wakeOne()
	}
}

func (b *Breaker) wakeOne() {
	b.mu.Lock()
	if len(b.waiters) > 0 {
		w := b.waiters[0]
		b.waiters = slices.Delete(b.waiters, 0, 1)
		b.nwait.Add(-1)
		w <- struct{}{} // capacity 1, and each enqueue is woken at most once
	}
	b.mu.Unlock()
}

// ThresholdStats is one threshold's state, for /clusters and /metrics.
type ThresholdStats struct {
	Threshold Threshold `json:"threshold"`
	// Limit is the configured limit (for retry_budget, as computed now).
	Limit uint64 `json:"limit"`
	// Active is how much of it is in use (Envoy's cx_active, rq_pending_active,
	// rq_active, rq_retry_active gauges).
	Active uint64 `json:"active"`
	// Remaining is Limit − Active, floored at 0 (Envoy's remaining_* gauges).
	Remaining uint64 `json:"remaining"`
	// Open reports whether the threshold is reached (Envoy's *_open gauges).
	Open bool `json:"open"`
	// Overflows counts refused acquisitions (Envoy's upstream_cx_overflow,
	// upstream_rq_pending_overflow, upstream_rq_retry_overflow); for
	// connections, the AcquireConn calls that had to wait.
	Overflows uint64 `json:"overflows"`
}

// Stats is a snapshot of a breaker. The fields are read one by one without
// a lock, so under load they are each current but not mutually consistent.
type Stats struct {
	Connections     ThresholdStats `json:"connections"`
	PendingRequests ThresholdStats `json:"pending_requests"`
	Requests        ThresholdStats `json:"requests"`
	Retries         ThresholdStats `json:"retries"`
}

// All returns the four thresholds, for iterating.
func (s Stats) All() [4]ThresholdStats {
	return [4]ThresholdStats{s.Connections, s.PendingRequests, s.Requests, s.Retries}
}

// Stats returns a snapshot of usage, limits and overflow counts.
func (b *Breaker) Stats() Stats {
	retryThreshold, retryLimit := MaxRetries, b.maxRetries
	if b.budget {
		retryThreshold, retryLimit = RetryBudget, b.retryBudget()
	}
	return Stats{
		Connections:     b.threshold(MaxConnections, b.maxConns, &b.conns, iConns),
		PendingRequests: b.threshold(MaxPendingRequests, b.maxPending, &b.pending, iPending),
		Requests:        b.threshold(MaxRequests, b.maxRequests, &b.requests, iRequests),
		Retries:         b.threshold(retryThreshold, retryLimit, &b.retries, iRetries),
	}
}

func (b *Breaker) threshold(t Threshold, limit int64, c *counter, i int) ThresholdStats {
	active := max(c.Load(), 0)
	return ThresholdStats{
		Threshold: t,
		Limit:     uint64(limit),
		Active:    uint64(active),
		Remaining: uint64(max(limit-active, 0)),
		Open:      active >= limit,
		Overflows: b.overflows[i].Load(),
	}
}
