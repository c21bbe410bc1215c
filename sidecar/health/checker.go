package health

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Errors a check reports (in Status.LastError and the logs). Connection
// errors are wrapped as they come from the net package.
var (
	// ErrTimeout: the check did not finish within the configured timeout.
	ErrTimeout = errors.New("health: check timed out")
	// ErrUnexpectedStatus: the HTTP status is not in expected_statuses.
	ErrUnexpectedStatus = errors.New("health: unexpected HTTP status")
	// ErrNotServing: the gRPC health service answered other than SERVING.
	ErrNotServing = errors.New("health: gRPC service not serving")
	// ErrExpectNotSeen: the TCP peer closed before sending the expected bytes.
	ErrExpectNotSeen = errors.New("health: expected TCP response not seen")
)

// UserAgent is sent with HTTP and gRPC checks.
const UserAgent = "sidemesh-health-check"

// Options are the parts of a Checker that are not configuration.
type Options struct {
	// ServiceName is the default HTTP Host header and gRPC :authority (Envoy
	// uses the cluster name); empty means the endpoint address.
	ServiceName string
	// Logger receives transitions (info) and check errors (debug); nil
	// discards.
	Logger *slog.Logger
	// OnChange is called whenever a host's Healthy flips. It runs on the
	// goroutine of the host that flipped, outside the Checker's locks,
	// before that host's next check; calls are serialised (never two at
	// once). It may call Healthy, Status and Statuses, and may be called
	// after the host was removed (a harmless extra rebuild); it must not
	// call Close or SetHosts.
	OnChange func()
	// OnSuccess is called after every passing check, on that host's
	// goroutine, outside locks; calls for different hosts may run
	// concurrently. Clusters use it to un-eject outlier-ejected hosts
	// (Envoy's successful_active_health_check_uneject_host).
	OnSuccess func(addr string)
	// Traffic reports whether the cluster has seen traffic; while it returns
	// false, checks run every no_traffic_interval. nil means "has traffic".
	// It is called before every wait, from host goroutines concurrently.
	Traffic func() bool
	// Seed seeds the jitter; 0 picks a random seed.
	Seed uint64
}

// Status is a snapshot of one host's health-check state, for /clusters.
type Status struct {
	Address string `json:"address"`
	// Healthy is what Checker.Healthy answers.
	Healthy bool `json:"healthy"`
	// Pending is true until the host's first check completes.
	Pending              bool      `json:"pending,omitempty"`
	ConsecutiveSuccesses uint32    `json:"consecutive_successes"`
	ConsecutiveFailures  uint32    `json:"consecutive_failures"`
	Attempts             uint64    `json:"attempts"` // checks completed
	Failures             uint64    `json:"failures"` // checks failed
	LastError            string    `json:"last_error,omitempty"`
	LastCheck            time.Time `json:"last_check,omitzero"` // when the last check completed
}

// Checker runs active health checks against a set of endpoint addresses,
// one goroutine per address, and tells which ones pass.
//
// Concurrency contract: every method is safe for concurrent use. Healthy,
// Status and Statuses only read; SetHosts and Close change the set of
// checked hosts. After Close, SetHosts does nothing and every host reads as
// unhealthy (unknown).
type Checker struct {
	cfg       Config
	opts      Options
	log       *slog.Logger
	newProber func(addr string) prober
	seed      maphash.Seed

	notifyMu sync.Mutex // serialises OnChange

	mu     sync.RWMutex
	hosts  map[string]*host
	closed bool
	wg     sync.WaitGroup
}

// host is one checked address. Its goroutine is the only writer of st and
// the counters; mu guards them against readers.
type host struct {
	addr    string
	cancel  context.CancelFunc
	healthy atomic.Bool

	mu        sync.Mutex
	st        state
	attempts  uint64
	failures  uint64
	lastErr   string
	lastCheck time.Time
}

// New returns a Checker for cfg, which must have been defaulted and
// validated (SetDefaults, Validate). It checks nothing until SetHosts.
func New(cfg Config, opts Options) *Checker {
	c := newChecker(cfg, opts, nil)
	switch {
	case cfg.HTTP != nil:
		c.newProber = func(addr string) prober { return newHTTPProber(addr, cfg.HTTP, cfg.Timeout, opts.ServiceName) }
	case cfg.TCP != nil:
		c.newProber = func(addr string) prober { return newTCPProber(addr, cfg.TCP) }
	case cfg.GRPC != nil:
		c.newProber = func(addr string) prober { return newGRPCProber(addr, cfg.GRPC, opts.ServiceName) }
	default:
		panic("health: New with a config that has no http, tcp or grpc check (Validate it first)")
	}
	return c
}

func newChecker(cfg Config, opts Options, np func(string) prober) *Checker {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Seed == 0 {
		opts.Seed = rand.Uint64()
	}
	return &Checker{
		cfg:       cfg,
		opts:      opts,
		log:       log.With("component", "health", "check", cfg.String()),
		newProber: np,
		seed:      maphash.MakeSeed(),
		hosts:     make(map[string]*host),
	}
}

// SetHosts makes addrs the set of checked hosts: it starts checking the new
// addresses (each starts unhealthy and pending) and stops checking the ones
// no longer listed. Hosts that stay keep their state. Duplicates are ignored.
func (c *Checker) SetHosts(addrs []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	keep := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		keep[a] = true
		if _, ok := c.hosts[a]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		h := &host{addr: a, cancel: cancel}
		c.hosts[a] = h
		// The seed mixes the address in so that hosts do not share jitter.
		rnd := rand.New(rand.NewPCG(c.opts.Seed, maphash.String(c.seed, a)))
		p := c.newProber(a)
		c.wg.Go(func() { c.run(ctx, h, p, rnd) })
	}
	for a, h := range c.hosts {
		if !keep[a] {
			h.cancel()
			delete(c.hosts, a)
		}
	}
}

// Healthy reports whether addr passes its health checks. Unknown addresses
// and hosts whose first check has not passed yet are not healthy.
func (c *Checker) Healthy(addr string) bool {
	c.mu.RLock()
	h := c.hosts[addr]
	c.mu.RUnlock()
	return h != nil && h.healthy.Load()
}

// Status returns the state of one host, or false if addr is not checked.
func (c *Checker) Status(addr string) (Status, bool) {
	c.mu.RLock()
	h := c.hosts[addr]
	c.mu.RUnlock()
	if h == nil {
		return Status{}, false
	}
	return h.status(), true
}

// Statuses returns the state of every checked host, sorted by address.
func (c *Checker) Statuses() []Status {
	c.mu.RLock()
	out := make([]Status, 0, len(c.hosts))
	for _, h := range c.hosts {
		out = append(out, h.status())
	}
	c.mu.RUnlock()
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Address, b.Address) })
	return out
}

// Close stops every check and waits for the goroutines to end. Idempotent.
func (c *Checker) Close() {
	c.mu.Lock()
	c.closed = true
	for a, h := range c.hosts {
		h.cancel()
		delete(c.hosts, a)
	}
	c.mu.Unlock()
	c.wg.Wait()
}

func (h *host) status() Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	return Status{
		Address:              h.addr,
		Healthy:              h.st.healthy,
		Pending:              !h.st.checked,
		ConsecutiveSuccesses: h.st.successes,
		ConsecutiveFailures:  h.st.failures,
		Attempts:             h.attempts,
		Failures:             h.failures,
		LastError:            h.lastErr,
		LastCheck:            h.lastCheck,
	}
}

// run is the goroutine of one host: wait, check, record, repeat, until ctx
// is cancelled. Checks never overlap: the next wait starts when a check ends.
func (c *Checker) run(ctx context.Context, h *host, p prober, rnd *rand.Rand) {
	defer p.close()
	t := time.NewTimer(initialWait(&c.cfg, rnd))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r := c.check(ctx, p)
		if ctx.Err() != nil {
			return // removed or closed: the result is moot
		}
		c.record(h, r)
		traffic := c.opts.Traffic == nil || c.opts.Traffic()
		t.Reset(waitFor(&c.cfg, traffic, rnd))
	}
}

// check runs one probe under the configured timeout.
func (c *Checker) check(ctx context.Context, p prober) result {
	cctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	r := p.probe(cctx)
	deadline, _ := cctx.Deadline()
	// A socket deadline set from cctx may fire a hair before cctx's own
	// timer does, hence the clock check beside cctx.Err.
	timedOut := errors.Is(cctx.Err(), context.DeadlineExceeded) || !time.Now().Before(deadline)
	if r.verdict != pass && timedOut && ctx.Err() == nil {
		// Whatever the probe saw, the cause is the deadline; a timeout is a
		// network failure in Envoy (counted, not immediate).
		r = result{verdict: failCounted, err: fmt.Errorf("%w after %s: %v", ErrTimeout, c.cfg.Timeout, r.err)}
	}
	return r
}

// record applies a result to the host and runs the callbacks.
func (c *Checker) record(h *host, r result) {
	h.mu.Lock()
	var changed bool
	h.st, changed = h.st.next(r.verdict, uint32(c.cfg.HealthyThreshold), uint32(c.cfg.UnhealthyThreshold))
	h.attempts++
	h.lastCheck = time.Now()
	if r.verdict == pass {
		h.lastErr = ""
	} else {
		h.failures++
		h.lastErr = r.err.Error()
	}
	healthy := h.st.healthy
	h.healthy.Store(healthy)
	h.mu.Unlock()

	if r.verdict != pass && c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("health check failed", "address", h.addr, "verdict", r.verdict.String(), "error", r.err)
	}
	if changed {
		if healthy {
			c.log.Info("host healthy", "address", h.addr)
		} else {
			c.log.Warn("host unhealthy", "address", h.addr, "error", r.err)
		}
		if c.opts.OnChange != nil {
			c.notifyMu.Lock()
			c.opts.OnChange()
			c.notifyMu.Unlock()
		}
	}
	if r.verdict == pass && c.opts.OnSuccess != nil {
		c.opts.OnSuccess(h.addr)
	}
}

// prober runs the checks of one host. probe and close are called from the
// host's goroutine only, never concurrently.
type prober interface {
	// probe runs one check within ctx (which carries the timeout).
	probe(ctx context.Context) result
	// close releases what the prober keeps between checks.
	close()
}

// result is one check's outcome; err is nil exactly when verdict is pass.
type result struct {
	verdict verdict
	err     error
}
