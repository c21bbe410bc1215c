package breaker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
	"gopkg.in/yaml.v3"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDefaults(t *testing.T) {
	var c Config
	c.SetDefaults()
	if *c.MaxConnections != 1024 || *c.MaxPendingRequests != 1024 || *c.MaxRequests != 1024 || *c.MaxRetries != 3 {
		t.Errorf("defaults = %d/%d/%d/%d, want 1024/1024/1024/3",
			*c.MaxConnections, *c.MaxPendingRequests, *c.MaxRequests, *c.MaxRetries)
	}
	if c.RetryBudget != nil {
		t.Error("SetDefaults added a retry_budget")
	}
	s := New(Config{}).Stats()
	for _, ts := range s.All() {
		want := map[Threshold]uint64{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3}[ts.Threshold]
		if ts.Limit != want || ts.Remaining != want || ts.Active != 0 || ts.Open {
			t.Errorf("%s: %+v, want limit %d and nothing in use", ts.Threshold, ts, want)
		}
	}
}

func TestDecodeKeepsZerosAndFillsBudget(t *testing.T) {
	const doc = `
max_connections: 0
max_retries: 0
retry_budget: {}
`
	var c Config
	if err := yaml.Unmarshal([]byte(doc), &c); err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if *c.MaxConnections != 0 || *c.MaxRetries != 0 || *c.MaxRequests != 1024 {
		t.Errorf("max_connections, max_retries, max_requests = %d, %d, %d; want 0, 0, 1024",
			*c.MaxConnections, *c.MaxRetries, *c.MaxRequests)
	}
	if rb := c.RetryBudget; rb == nil || *rb.BudgetPercent != 20 || *rb.MinRetryConcurrency != 3 {
		t.Errorf("retry_budget: {} = %+v, want budget_percent 20, min_retry_concurrency 3", rb)
	}
}

func TestYAMLKeys(t *testing.T) {
	keys := func(v any) []string {
		var out []string
		rt := reflect.TypeOf(v)
		for i := range rt.NumField() {
			y := rt.Field(i).Tag.Get("yaml")
			if j, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ","); j != y {
				t.Errorf("%s.%s: json %q != yaml %q", rt.Name(), rt.Field(i).Name, j, y)
			}
			out = append(out, y)
		}
		return out
	}
	if got, want := keys(Config{}), []string{"max_connections", "max_pending_requests", "max_requests", "max_retries", "retry_budget"}; !slices.Equal(got, want) {
		t.Errorf("keys = %v, want %v", got, want)
	}
	if got, want := keys(RetryBudgetConfig{}), []string{"budget_percent", "min_retry_concurrency"}; !slices.Equal(got, want) {
		t.Errorf("retry_budget keys = %v, want %v", got, want)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"empty", Config{}, ""},
		{"zeros", Config{MaxConnections: new(uint32(0)), MaxRetries: new(uint32(0))}, ""},
		{"budget 0", Config{RetryBudget: &RetryBudgetConfig{BudgetPercent: new(0.0)}}, ""},
		{"budget 100", Config{RetryBudget: &RetryBudgetConfig{BudgetPercent: new(100.0)}}, ""},
		{"budget over 100", Config{RetryBudget: &RetryBudgetConfig{BudgetPercent: new(150.0)}},
			"upstreams[0].circuit_breakers.retry_budget.budget_percent: 150 must be in 0..100"},
		{"budget negative", Config{RetryBudget: &RetryBudgetConfig{BudgetPercent: new(-1.5)}},
			"upstreams[0].circuit_breakers.retry_budget.budget_percent: -1.5 must be in 0..100"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate("upstreams[0].circuit_breakers")
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("Validate: nil, want %q", tt.wantErr)
			case tt.wantErr != "":
				if !errors.Is(err, ErrInvalidConfig) || !strings.HasSuffix(err.Error(), ": "+tt.wantErr) {
					t.Errorf("Validate = %q, want ErrInvalidConfig and suffix %q", err, tt.wantErr)
				}
			}
		})
	}
}

// kind is one threshold's acquire/release pair and where its stats are.
type kind struct {
	threshold Threshold
	acquire   func(*Breaker) error
	release   func(*Breaker)
	stats     func(Stats) ThresholdStats
}

var kinds = []kind{
	{MaxConnections, (*Breaker).TryAcquireConn, (*Breaker).ReleaseConn, func(s Stats) ThresholdStats { return s.Connections }},
	{MaxPendingRequests, (*Breaker).AcquirePending, (*Breaker).ReleasePending, func(s Stats) ThresholdStats { return s.PendingRequests }},
	{MaxRequests, (*Breaker).AcquireRequest, (*Breaker).ReleaseRequest, func(s Stats) ThresholdStats { return s.Requests }},
	{MaxRetries, (*Breaker).AcquireRetry, (*Breaker).ReleaseRetry, func(s Stats) ThresholdStats { return s.Retries }},
}

func limited(n uint32) Config {
	return Config{MaxConnections: new(n), MaxPendingRequests: new(n), MaxRequests: new(n), MaxRetries: new(n)}
}

func TestOverflowAtExactlyTheLimit(t *testing.T) {
	for _, k := range kinds {
		for _, limit := range []uint32{0, 1, 3} {
			t.Run(fmt.Sprintf("%s=%d", k.threshold, limit), func(t *testing.T) {
				b := New(limited(limit))
				for i := range limit {
					if err := k.acquire(b); err != nil {
						t.Fatalf("acquisition %d of %d: %v", i+1, limit, err)
					}
				}
				err := k.acquire(b)
				var ov Overflow
				if !errors.As(err, &ov) || !errors.Is(err, ErrOverflow) {
					t.Fatalf("acquisition %d: %v, want an Overflow", limit+1, err)
				}
				if ov.Threshold != k.threshold || ov.Limit != uint64(limit) {
					t.Errorf("Overflow = %+v, want %s (%d)", ov, k.threshold, limit)
				}
				if want := fmt.Sprintf("breaker: %s (%d) overflowed", k.threshold, limit); err.Error() != want {
					t.Errorf("error = %q, want %q", err, want)
				}
				s := k.stats(b.Stats())
				if s.Active != uint64(limit) || s.Remaining != 0 || !s.Open || s.Overflows != 1 {
					t.Errorf("stats at the limit = %+v", s)
				}
				if limit == 0 {
					return
				}
				k.release(b)
				if err := k.acquire(b); err != nil {
					t.Fatalf("after a release: %v", err)
				}
				for range limit {
					k.release(b)
				}
				if s := k.stats(b.Stats()); s.Active != 0 || s.Open || s.Remaining != uint64(limit) {
					t.Errorf("stats after releasing all = %+v", s)
				}
			})
		}
	}
}

func TestThresholdsAreIndependent(t *testing.T) {
	b := New(limited(1))
	for _, k := range kinds {
		if err := k.acquire(b); err != nil {
			t.Fatalf("%s: %v (another threshold's use leaked into it)", k.threshold, err)
		}
	}
}

func TestReleaseWithoutAcquirePanics(t *testing.T) {
	for _, k := range kinds {
		t.Run(string(k.threshold), func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			k.release(New(Config{}))
		})
	}
}

func TestRetryBudget(t *testing.T) {
	tests := []struct {
		name              string
		budget            *RetryBudgetConfig
		requests, pending int
		want              int // retries allowed at once
	}{
		// max(min_retry_concurrency, ⌊budget_percent/100 × (requests + pending)⌋)
		{"idle: the minimum", &RetryBudgetConfig{}, 0, 0, 3},
		{"20% of 14 = 2.8 → 2 < 3", &RetryBudgetConfig{}, 14, 0, 3},
		{"20% of 20 = 4", &RetryBudgetConfig{}, 20, 0, 4},
		{"pending counts: 20% of 10+15 = 5", &RetryBudgetConfig{}, 10, 15, 5},
		{"20% of 100 = 20", &RetryBudgetConfig{}, 100, 0, 20},
		{"50% of 9 = 4.5 → 4", &RetryBudgetConfig{BudgetPercent: new(50.0), MinRetryConcurrency: new(uint32(1))}, 9, 0, 4},
		{"0% and minimum 0: no retries", &RetryBudgetConfig{BudgetPercent: new(0.0), MinRetryConcurrency: new(uint32(0))}, 50, 0, 0},
		{"no budget: max_retries 3 whatever the load", nil, 100, 0, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := New(Config{RetryBudget: tt.budget})
			for range tt.requests {
				if err := b.AcquireRequest(); err != nil {
					t.Fatal(err)
				}
			}
			for range tt.pending {
				if err := b.AcquirePending(); err != nil {
					t.Fatal(err)
				}
			}
			got := 0
			var err error
			for ; got <= 1000; got++ {
				if err = b.AcquireRetry(); err != nil {
					break
				}
			}
			if got != tt.want {
				t.Fatalf("allowed %d concurrent retries, want %d", got, tt.want)
			}
			var ov Overflow
			errors.As(err, &ov)
			wantThreshold := RetryBudget
			if tt.budget == nil {
				wantThreshold = MaxRetries
			}
			if ov.Threshold != wantThreshold || ov.Limit != uint64(tt.want) {
				t.Errorf("overflow = %+v, want %s (%d)", ov, wantThreshold, tt.want)
			}
			if s := b.Stats().Retries; s.Threshold != wantThreshold || s.Limit != uint64(tt.want) || s.Overflows != 1 {
				t.Errorf("retry stats = %+v", s)
			}
		})
	}
}

func TestRetryBudgetFollowsLoad(t *testing.T) {
	b := New(Config{RetryBudget: &RetryBudgetConfig{}})
	for range 30 {
		b.AcquireRequest()
	}
	for range 6 { // 20% of 30
		if err := b.AcquireRetry(); err != nil {
			t.Fatal(err)
		}
	}
	// Load falls to 15: budget 3, and 6 retries are in flight, so none more.
	for range 15 {
		b.ReleaseRequest()
	}
	if err := b.AcquireRetry(); err == nil {
		t.Fatal("retry allowed above the budget after the load fell")
	}
	for range 4 {
		b.ReleaseRetry()
	}
	if err := b.AcquireRetry(); err != nil { // 2 in flight < 3
		t.Fatalf("retry refused below the budget: %v", err)
	}
}

func TestConcurrentNeverExceedsLimit(t *testing.T) {
	const limit, workers, iterations = 4, 8, 20000
	b := New(limited(limit))
	var inFlight, peak, ok, refused atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range iterations {
				if b.AcquireRequest() != nil {
					refused.Add(1)
					continue
				}
				ok.Add(1)
				n := inFlight.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				inFlight.Add(-1)
				b.ReleaseRequest()
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > limit {
		t.Errorf("%d requests in flight at once, limit %d", p, limit)
	}
	s := b.Stats().Requests
	if s.Active != 0 || ok.Load()+refused.Load() != workers*iterations || s.Overflows != uint64(refused.Load()) {
		t.Errorf("active %d, ok %d + refused %d != %d, overflows %d", s.Active, ok.Load(), refused.Load(), workers*iterations, s.Overflows)
	}
	if ok.Load() == 0 {
		t.Error("nothing acquired")
	}
}

func TestAcquireConnWaitsForRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(limited(1))
		if err := b.AcquireConn(t.Context()); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- b.AcquireConn(context.Background()) }()
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("AcquireConn returned %v at the limit, want it to wait", err)
		default:
		}
		if s := b.Stats().Connections; s.Overflows != 1 || s.Active != 1 {
			t.Errorf("while waiting: %+v, want 1 overflow, 1 active", s)
		}
		b.ReleaseConn()
		synctest.Wait()
		if err := <-done; err != nil {
			t.Fatalf("AcquireConn after release: %v", err)
		}
		if s := b.Stats().Connections; s.Active != 1 {
			t.Errorf("active = %d, want 1 (the waiter's)", s.Active)
		}
		b.ReleaseConn()
	})
}

func TestAcquireConnContextEnds(t *testing.T) {
	tests := []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		end  func(cancel context.CancelFunc)
		want error
	}{
		{"cancel",
			func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			func(cancel context.CancelFunc) { cancel() },
			context.Canceled},
		{"deadline",
			func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 5*time.Second)
			},
			func(context.CancelFunc) { time.Sleep(5 * time.Second) },
			context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := New(limited(1))
				b.TryAcquireConn()
				ctx, cancel := tt.ctx()
				defer cancel()
				done := make(chan error, 1)
				start := time.Now()
				go func() { done <- b.AcquireConn(ctx) }()
				synctest.Wait()
				tt.end(cancel)
				synctest.Wait()
				err := <-done
				if !errors.Is(err, tt.want) || errors.Is(err, ErrOverflow) {
					t.Fatalf("AcquireConn = %v, want %v and not an overflow", err, tt.want)
				}
				if !strings.Contains(err.Error(), "max_connections (1)") {
					t.Errorf("error %q does not name the threshold", err)
				}
				if tt.want == context.DeadlineExceeded && time.Since(start) != 5*time.Second {
					t.Errorf("gave up after %v, want 5s", time.Since(start))
				}
				if b.nwait.Load() != 0 || len(b.waiters) != 0 {
					t.Errorf("%d waiters left queued", b.nwait.Load())
				}
				// The slot was not taken by the cancelled waiter.
				b.ReleaseConn()
				if err := b.TryAcquireConn(); err != nil {
					t.Errorf("slot lost: %v", err)
				}
			})
		})
	}
}

func TestAcquireConnReleaseBeforeEnqueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// The slot frees after the waiter's first attempt failed but before
		// it queued, so the release wakes nobody: the waiter must see the
		// free slot by itself.
		b := New(limited(1))
		b.TryAcquireConn()
		testHookBeforeEnqueue = b.ReleaseConn
		defer func() { testHookBeforeEnqueue = nil }()
		done := make(chan error, 1)
		go func() { done <- b.AcquireConn(context.Background()) }()
		synctest.Wait()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatal("AcquireConn waits while a slot is free (lost wake-up)")
		}
		b.ReleaseConn()
	})
}

func TestLeavePassesWakeUpOn(t *testing.T) {
	// A waiter woken by a release that then gives up (its context ended at
	// the same moment) must hand the wake-up to the next waiter.
	b := New(limited(1))
	w1, w2 := make(chan struct{}, 1), make(chan struct{}, 1)
	b.enqueue(w1)
	b.enqueue(w2)
	b.wakeOne() // wakes w1
	b.leave(w1) // w1 gives up without using it
	select {
	case <-w2:
	default:
		t.Fatal("the wake-up died with the waiter that gave up")
	}
	if b.nwait.Load() != 0 {
		t.Errorf("%d waiters still queued", b.nwait.Load())
	}
}

func TestAcquireConnManyWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const limit, waiters = 3, 50
		b := New(limited(limit))
		var held, peak atomic.Int64
		var wg sync.WaitGroup
		var got, cancelled atomic.Int64
		for i := range waiters {
			wg.Go(func() {
				// Every fifth gives up after a while; the others wait as
				// long as it takes.
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				if i%5 == 0 {
					ctx, cancel = context.WithTimeout(ctx, time.Duration(i)*time.Millisecond)
					defer cancel()
				}
				if err := b.AcquireConn(ctx); err != nil {
					cancelled.Add(1)
					return
				}
				got.Add(1)
				n := held.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				time.Sleep(time.Duration(1+i%7) * time.Millisecond)
				held.Add(-1)
				b.ReleaseConn()
			})
		}
		wg.Wait() // a lost wake-up would leave a waiter blocked forever: synctest reports the deadlock
		if p := peak.Load(); p > limit {
			t.Errorf("%d connections at once, limit %d", p, limit)
		}
		if got.Load()+cancelled.Load() != waiters || got.Load() < waiters-waiters/5 {
			t.Errorf("acquired %d, cancelled %d of %d", got.Load(), cancelled.Load(), waiters)
		}
		if s := b.Stats().Connections; s.Active != 0 || b.nwait.Load() != 0 {
			t.Errorf("after all: active %d, waiting %d", s.Active, b.nwait.Load())
		}
	})
}

func TestAcquireConnStress(t *testing.T) {
	// Real time and real parallelism, for the race detector: random
	// cancellations racing with releases must never lose a slot.
	b := New(limited(2))
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range 2000 {
				ctx, cancel := context.WithCancel(context.Background())
				if r.IntN(4) == 0 {
					cancel()
				}
				if b.AcquireConn(ctx) == nil {
					b.ReleaseConn()
				}
				cancel()
			}
		})
	}
	wg.Wait()
	if s := b.Stats().Connections; s.Active != 0 || b.nwait.Load() != 0 {
		t.Fatalf("after all: active %d, waiting %d", s.Active, b.nwait.Load())
	}
	for range 2 {
		if err := b.TryAcquireConn(); err != nil {
			t.Fatalf("slots lost: %v", err)
		}
	}
}

func TestNoAllocations(t *testing.T) {
	b := New(limited(1))
	for _, k := range kinds {
		if n := testing.AllocsPerRun(1000, func() {
			if k.acquire(b) == nil {
				k.release(b)
			}
		}); n != 0 {
			t.Errorf("%s acquire+release: %v allocs", k.threshold, n)
		}
		k.acquire(b)
		if n := testing.AllocsPerRun(1000, func() { _ = k.acquire(b) }); n != 0 {
			t.Errorf("%s overflow: %v allocs", k.threshold, n)
		}
		k.release(b)
	}
	if n := testing.AllocsPerRun(1000, func() {
		if b.AcquireConn(context.Background()) == nil {
			b.ReleaseConn()
		}
	}); n != 0 {
		t.Errorf("AcquireConn+ReleaseConn without waiting: %v allocs", n)
	}
}

func BenchmarkAcquireReleaseRequest(b *testing.B) {
	br := New(Config{MaxRequests: new(uint32(1 << 30))})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if br.AcquireRequest() != nil {
				b.Fatal("overflow")
			}
			br.ReleaseRequest()
		}
	})
}

func BenchmarkAcquireRetryBudget(b *testing.B) {
	br := New(Config{RetryBudget: &RetryBudgetConfig{MinRetryConcurrency: new(uint32(1 << 30))}})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if br.AcquireRetry() != nil {
				b.Fatal("overflow")
			}
			br.ReleaseRetry()
		}
	})
}
