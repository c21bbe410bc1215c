package consul

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
)

// Options tune a Source beyond its YAML config. Zero values take the
// package defaults.
type Options struct {
	Logger           *slog.Logger
	MinQueryInterval time.Duration // DefaultMinQueryInterval
	BaseBackoff      time.Duration // DefaultBaseBackoff
	MaxBackoff       time.Duration // DefaultMaxBackoff
	RequestTimeout   time.Duration // DefaultRequestTimeout
	// Transport, when set, carries the HTTP requests (tests).
	Transport http.RoundTripper
}

func (o *Options) setDefaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MinQueryInterval <= 0 {
		o.MinQueryInterval = DefaultMinQueryInterval
	}
	if o.BaseBackoff <= 0 {
		o.BaseBackoff = DefaultBaseBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
}

// Stats describe the blocking query of one service, for /clusters and
// metrics.
type Stats struct {
	Service string
	// Datacenter is the datacenter queried for a failover watch
	// (WatchDatacenter); empty for the source's own.
	Datacenter string
	Version    uint64 // of the last snapshot published (0: none yet)
	Endpoints  int    // in that snapshot
	Index      uint64 // X-Consul-Index of the last successful query
	// LastSuccess is when Consul last vouched for the endpoints; the age of
	// the data in service is the time since (zero: never).
	LastSuccess time.Time
	// LastError and LastErrorTime describe the last failed query; they are
	// kept after a recovery (ConsecutiveFailures is then 0).
	LastError           error
	LastErrorTime       time.Time
	ConsecutiveFailures int
	FailuresTotal       uint64
	QueriesTotal        uint64
}

// Stale reports how long ago Consul last vouched for the data (0 if it
// never has).
func (st Stats) Stale(now time.Time) time.Duration {
	if st.LastSuccess.IsZero() {
		return 0
	}
	return now.Sub(st.LastSuccess)
}

// Source is the Consul discovery source. The first Watch of a service
// starts one goroutine that keeps one blocking query on
// /v1/health/service/<name> open; every watcher of that service shares it.
// Nothing here queries Consul per request or per dial.
//
// Concurrency: Watch, Stats and Close may be called from any goroutine.
// Watcher callbacks for one service come from that service's goroutine, one
// at a time (see discovery.Fanout).
type Source struct {
	discovery.Fanout

	cfg    Config
	opts   Options
	log    *slog.Logger
	client *api.Client
	tr     *http.Transport
	bo     backoff

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	stats  map[string]*Stats
}

var _ discovery.Source = (*Source)(nil)

// New validates cfg (after filling defaults) and returns a source. It does
// not contact Consul: a service's first query happens on its first Watch,
// and an unreachable Consul is reported to watchers as an ambient error.
func New(cfg Config, opts Options) (*Source, error) {
	cfg.SetDefaults()
	if err := cfg.Validate("discovery.consul"); err != nil {
		return nil, err
	}
	opts.setDefaults()
	client, tr, err := newClient(cfg, opts.Transport)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Source{
		cfg:    cfg,
		opts:   opts,
		log:    opts.Logger.With("component", "discovery.consul", "consul", cfg.Address),
		client: client,
		tr:     tr,
		bo:     backoff{base: opts.BaseBackoff, max: opts.MaxBackoff},
		ctx:    ctx,
		cancel: cancel,
		stats:  make(map[string]*Stats),
	}
	s.OnFirstWatch = s.start
	return s, nil
}

// Close stops every query and waits for the goroutines to end. Watchers get
// no further callbacks.
func (s *Source) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	if s.tr != nil {
		s.tr.CloseIdleConnections()
	}
	return nil
}

// Stats returns the stats of every watched service, sorted by service.
func (s *Source) Stats() []Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Stats, 0, len(s.stats))
	for _, st := range s.stats {
		out = append(out, *st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Datacenter < out[j].Datacenter
	})
	return out
}

// ServiceStats returns one service's stats; ok is false if it is not watched.
func (s *Source) ServiceStats(service string) (st Stats, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.stats[service]
	if !ok {
		return Stats{}, false
	}
	return *p, true
}

// start begins the blocking query behind a Fanout key: a service name, or
// a service in another datacenter (dcKey).
func (s *Source) start(key string) {
	service, dc := splitKey(key)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.ResourceError(key, fmt.Errorf("consul: service %q: %w", service, discovery.ErrSourceClosed))
		return
	}
	s.stats[key] = &Stats{Service: service, Datacenter: dc}
	s.wg.Add(1)
	s.mu.Unlock()
	go s.watch(key)
}

// watch runs the blocking-query loop of one Fanout key until Close.
func (s *Source) watch(key string) {
	defer s.wg.Done()
	service, dc := splitKey(key)
	log := s.log.With("service", service)
	if dc != "" {
		log = log.With("datacenter", dc)
	}
	var (
		index     uint64
		last      *discovery.Snapshot
		failures  int
		lastStart time.Time
		retryAt   time.Time
	)
	for {
		if !sleepCtx(s.ctx, pace(time.Now(), lastStart, retryAt, s.opts.MinQueryInterval)) {
			return
		}
		lastStart = time.Now()
		entries, got, err := s.query(service, dc, index)
		if s.ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			// The agent that answers next may be a new one with a lower
			// index: read the current state at once instead of blocking on
			// an index it may never reach.
			index = 0
			retryAt = time.Now().Add(s.bo.delay(failures))
			s.recordFailure(key, err, failures)
			if failures == 1 {
				log.Warn("consul query failed; keeping the last endpoints", "err", err)
			} else {
				log.Debug("consul query failed again", "err", err, "consecutive_failures", failures)
			}
			s.AmbientError(key, fmt.Errorf("consul: service %q%s: %w: %w", service, inDC(dc), discovery.ErrUnavailable, err))
			continue
		}
		if failures > 0 {
			log.Info("consul reachable again", "failed_queries", failures)
		}
		failures, retryAt = 0, time.Time{}
		version := uint64(1)
		if last != nil {
			version = last.Version + 1
		}
		snap, err := discovery.NewSnapshot(key, version, endpointsOf(entries))
		if err != nil {
			// endpointsOf only yields valid, distinct endpoints; this is a bug.
			log.Error("consul data rejected", "err", err)
			s.AmbientError(key, err)
			continue
		}
		if last.Equal(snap) {
			snap = last // nothing changed: re-confirm the same version
		} else {
			log.Debug("consul endpoints changed", "version", snap.Version, "endpoints", len(snap.Endpoints), "index", got)
		}
		last = snap
		index = nextIndex(index, got)
		s.recordSuccess(key, snap, got)
		s.Publish(snap)
	}
}

// query runs one health query: blocking when index > 0, else an immediate read.
func (s *Source) query(service, dc string, index uint64) ([]*api.ServiceEntry, uint64, error) {
	ctx, cancel := context.WithTimeout(s.ctx, queryTimeout(index, s.cfg.WaitTime, s.opts.RequestTimeout))
	defer cancel()
	if dc == "" {
		dc = s.cfg.Datacenter
	}
	q := &api.QueryOptions{
		Datacenter: dc,
		// As Consul's own agent cache does for this endpoint: any server may
		// answer, so reads survive a lost leader.
		AllowStale: true,
		WaitIndex:  index,
		WaitTime:   s.cfg.WaitTime,
	}
	entries, meta, err := s.client.Health().Service(service, s.cfg.Tag, false, q.WithContext(ctx))
	if err != nil {
		return nil, 0, err
	}
	return entries, meta.LastIndex, nil
}

func (s *Source) recordFailure(service string, err error, failures int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats[service]
	st.QueriesTotal++
	st.FailuresTotal++
	st.ConsecutiveFailures = failures
	st.LastError, st.LastErrorTime = err, time.Now()
}

func (s *Source) recordSuccess(service string, snap *discovery.Snapshot, index uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats[service]
	st.QueriesTotal++
	st.ConsecutiveFailures = 0
	st.Version, st.Endpoints, st.Index = snap.Version, len(snap.Endpoints), index
	st.LastSuccess = time.Now()
}

var _ discovery.Catalog = (*Source)(nil)

// WatchServices implements discovery.Catalog: one blocking query on
// /v1/catalog/services (the services of the datacenter) per call, f called
// with the sorted names whenever the set changes. Failures back off as the
// health queries do; the last list stays in effect.
func (s *Source) WatchServices(f func(services []string)) (cancel func()) {
	ctx, stop := context.WithCancel(s.ctx)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		stop()
		return func() {}
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		var last []string
		s.blockingLoop(ctx, s.log, "catalog services", func(ctx context.Context, index uint64) (uint64, error) {
			names, got, err := s.queryCatalog(ctx, index)
			if err != nil || (last != nil && slices.Equal(last, names)) {
				return got, err
			}
			last = names
			f(slices.Clone(names))
			return got, nil
		})
	}()
	return stop
}

// queryCatalog lists the datacenter's services (blocking when index > 0).
func (s *Source) queryCatalog(ctx context.Context, index uint64) ([]string, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout(index, s.cfg.WaitTime, s.opts.RequestTimeout))
	defer cancel()
	q := &api.QueryOptions{Datacenter: s.cfg.Datacenter, AllowStale: true, WaitIndex: index, WaitTime: s.cfg.WaitTime}
	m, meta, err := s.client.Catalog().Services(q.WithContext(ctx))
	if err != nil {
		return nil, 0, err
	}
	names := make([]string, 0, len(m))
	for name := range m {
		if name == "consul" {
			continue // Consul's own servers, not a mesh service
		}
		names = append(names, name)
	}
	sort.Strings(names)
	return names, meta.LastIndex, nil
}
