package sidecar

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"reflect"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/discovery/consul"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/health"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
	"github.com/sidemesh/sidemesh/tracing"
	"github.com/sidemesh/sidemesh/upstream"
)

// Host is one endpoint of a cluster with everything the sidecar knows about
// it. Hosts are keyed by address and survive discovery updates, so counters,
// ejections and health-check state carry over.
type Host struct {
	Addr string

	weight  atomic.Uint32 // discovery weight
	dhealth atomic.Uint32 // discovery.Health

	Active   atomic.Int64 // requests outstanding
	CxActive atomic.Int64 // upstream connections open
	RqTotal  atomic.Uint64
	RqError  atomic.Uint64 // 5xx, resets, connect failures, timeouts

	od atomic.Pointer[outlier.Host]
	m  *hostMetrics
	// mtls: a mesh instance (discovery.Endpoint.MTLS): dials originate mTLS.
	mtls atomic.Bool

	priority uint32 // discovery priority level; guarded by Cluster.mu
	zone     string // discovery zone; guarded by Cluster.mu

	// guarded by Cluster.mu
	inSnapshot    bool
	eligible      bool
	everEligible  bool
	eligibleSince time.Time
}

// outlier is the host's outlier-detection state (nil when detection is off).
func (h *Host) outlier() *outlier.Host { return h.od.Load() }

// Weight is the discovery weight.
func (h *Host) Weight() uint32 { return h.weight.Load() }

// pickState is what the request path sees: immutable once stored.
type pickState struct {
	levels []level  // by priority, lowest (preferred) first
	cum    []uint64 // cumulative level loads scaled to 2^32 (chooseLevel)
	panic  bool     // some level with load balances in panic
	total  int      // hosts in the snapshot
	n      int      // hosts some level may pick
}

// Cluster is one upstream service: its hosts, its picker and the
// resilience machinery around them.
type Cluster struct {
	Name string
	cfg  *Upstream // as built; cur is the one in force (a reload replaces it)
	cur  atomic.Pointer[Upstream]
	log  *slog.Logger
	// hostLog is log without the component, for the outlier detector and
	// health checker, which add their own.
	hostLog *slog.Logger
	m       *Metrics
	cm      *clusterMetrics

	state      atomic.Pointer[pickState]
	br         atomic.Pointer[breaker.Breaker]
	connTO     atomic.Int64 // connect_timeout, ns
	policy     atomic.Pointer[string]
	hashing    atomic.Bool // the policy in force uses the request hash
	tp         *tracing.Provider
	inbound    bool
	hadTraffic atomic.Bool

	// mesh originates mTLS to mesh endpoints (nil: mtls off);
	// tlsSessions resumes its sessions.
	mesh        *meshTLS
	tlsSessions tls.ClientSessionCache

	// guarded by mu (swapped when xDS cluster settings arrive)
	od       *outlier.Detector
	odCancel context.CancelFunc
	hc       *health.Checker
	lbPolicy string
	lbConfig balancer.Config
	panicPct float64
	// eff is the settings in force: the file's merged with the last from
	// CDS (upstream.Merge); lastCDS is that last from CDS (nil: none yet).
	eff     upstream.Settings
	lastCDS *upstream.Settings
	// onRemoved runs (outside mu) when hosts leave the cluster.
	onRemoved []func()
	// prioSeen is the priority levels with a priority-load series.
	prioSeen map[uint32]bool
	// localZone is the sidecar's own zone (set before start).
	localZone string
	// origin is the local cluster's hosts per zone (nil: unknown).
	origin map[string]int

	mu            sync.Mutex
	hosts         map[string]*Host
	snap          *discovery.Snapshot
	resourceErr   error
	ambientErr    error
	ambientSince  time.Time
	ambientWarned time.Time // the last warn about ambientErr
	lastFresh     time.Time
	updates       uint64
	haveFirst     bool
	ready         chan struct{}
	slowTimer     *time.Timer
	closed        bool
	cancelWatch   func()
	bgCtx         context.Context
	bgCancel      context.CancelFunc
	bgWG          sync.WaitGroup
}

// newCluster builds a cluster; start begins watching and background work.
// log carries no component: the cluster's own lines say "cluster" (or
// "inbound"), its outlier detector's and health checker's their own.
func newCluster(u *Upstream, m *Metrics, tp *tracing.Provider, log *slog.Logger) *Cluster {
	component := "cluster"
	if u.noOutlier {
		component = "inbound"
	}
	c := &Cluster{
		Name:     u.Service,
		cfg:      u,
		log:      log.With("component", component, "upstream", u.Service),
		hostLog:  log.With("upstream", u.Service),
		m:        m,
		cm:       m.cluster(u.Service),
		tp:       tp,
		inbound:  u.noOutlier,
		hosts:    map[string]*Host{},
		ready:    make(chan struct{}),
		lbPolicy: u.LBPolicy,
		lbConfig: u.LB,
		panicPct: *u.HealthyPanicThreshold,
		eff:      u.Settings,
	}
	c.cur.Store(u)
	c.br.Store(breaker.New(*u.CircuitBreakers))
	c.connTO.Store(int64(u.ConnectTimeout))
	c.setPolicy(u.LBPolicy)
	if !u.noOutlier {
		c.od = c.newDetector(*u.OutlierDetection)
	}
	if u.HealthCheck != nil {
		c.hc = c.newChecker(*u.HealthCheck)
	}
	c.state.Store(&pickState{})
	return c
}

func (c *Cluster) newDetector(cfg outlier.Config) *outlier.Detector {
	return outlier.New(cfg, outlier.Options{Logger: c.hostLog, OnChange: c.rebuild})
}

func (c *Cluster) newChecker(cfg health.Config) *health.Checker {
	return health.New(cfg, health.Options{
		Logger:      c.hostLog,
		ServiceName: c.Name,
		OnChange:    c.rebuild,
		Traffic:     c.hadTraffic.Load, // no_traffic_interval until the first request
		OnSuccess: func(addr string) {
			c.mu.Lock()
			od := c.od
			c.mu.Unlock()
			if od != nil {
				od.Uneject(addr) // a no-op unless successful_active_health_check_uneject_host
			}
		},
	})
}

// breaker is the circuit breaker in force; a request keeps the one it
// started with.
func (c *Cluster) breaker() *breaker.Breaker { return c.br.Load() }

func (c *Cluster) connectTimeout() time.Duration { return time.Duration(c.connTO.Load()) }

func (c *Cluster) policyName() string { return *c.policy.Load() }

// usesHash reports whether the policy in force picks by the request hash
// (hash_policy applies only then).
func (c *Cluster) usesHash() bool { return c.hashing.Load() }

func (c *Cluster) setPolicy(name string) {
	c.lbPolicy = name
	c.policy.Store(&name)
	c.hashing.Store(balancer.Hashing(name))
}

// applySettings applies upstream settings received over CDS with the
// per-key rule of upstream.Merge: a key set in the local config file wins;
// every key it leaves out takes the control plane's value. Swaps happen
// without dropping requests: a request keeps the breaker it started with.
// Each of breaker, outlier detector and health checker is rebuilt only
// when its own effective settings changed: a new one starts from scratch
// (ejections forgotten, every host unhealthy until checked again).
func (c *Cluster) applySettings(remote upstream.Settings) {
	c.mu.Lock()
	if c.closed || (c.lastCDS != nil && reflect.DeepEqual(*c.lastCDS, remote)) {
		c.mu.Unlock()
		return
	}
	c.lastCDS = &remote
	u := c.upstream()
	c.applyLocked(upstream.Merge(u.Settings, remote, u.IsSet), "cluster settings from xDS applied (keys in the local file win)")
}

// upstream is the upstream config in force: the file's, as last loaded.
func (c *Cluster) upstream() *Upstream { return c.cur.Load() }

// applyLocked puts effective settings in force (CDS or a reload); the
// caller holds mu, which applyLocked releases.
func (c *Cluster) applyLocked(eff upstream.Settings, msg string) {
	prev := c.eff
	// Options the picker would refuse would make every later rebuild
	// fail, freezing the endpoints in force: keep the ones in force.
	lb := eff.LB
	lb.SetDefaults()
	if err := lb.Validate(""); err != nil {
		c.log.Warn("lb options from xDS ignored", "err", err)
		eff.LB = prev.LB
	}
	c.eff = eff
	if eff.LBPolicy != "" && balancer.ValidPolicy(eff.LBPolicy) {
		c.setPolicy(eff.LBPolicy)
	}
	c.lbConfig = eff.LB
	if p := eff.HealthyPanicThreshold; p != nil {
		c.panicPct = *p
	}
	if eff.ConnectTimeout > 0 {
		c.connTO.Store(int64(eff.ConnectTimeout))
	}
	if b := eff.CircuitBreakers; b != nil && !reflect.DeepEqual(prev.CircuitBreakers, b) {
		cfg := *b
		cfg.SetDefaults()
		c.br.Store(breaker.New(cfg))
	}
	if o := eff.OutlierDetection; o != nil && !c.inbound && !reflect.DeepEqual(prev.OutlierDetection, o) {
		cfg := *o
		cfg.SetDefaults()
		c.od = c.newDetector(cfg)
		c.bindDetectorLocked(c.hostAddrsLocked())
		c.runDetectorLocked()
	}
	var oldHC *health.Checker
	if !reflect.DeepEqual(prev.HealthCheck, eff.HealthCheck) {
		oldHC = c.hc
		c.hc = nil
		if h := eff.HealthCheck; h != nil {
			cfg := *h
			cfg.SetDefaults()
			c.hc = c.newChecker(cfg)
			c.hc.SetHosts(c.hostAddrsLocked())
		}
	}
	c.mu.Unlock()
	if oldHC != nil {
		oldHC.Close()
	}
	c.log.Info(msg, "lb_policy", c.policyName())
	c.rebuild()
}

// hostAddrsLocked lists the hosts' addresses; the caller holds mu.
func (c *Cluster) hostAddrsLocked() []string {
	addrs := make([]string, 0, len(c.hosts))
	for a := range c.hosts {
		addrs = append(addrs, a)
	}
	return addrs
}

// XDSApplied reports whether cluster settings have arrived over CDS.
func (c *Cluster) XDSApplied() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastCDS != nil
}

// runDetector starts the detector's interval loop; the caller holds mu.
func (c *Cluster) runDetectorLocked() {
	if c.od == nil || c.bgCtx == nil {
		return
	}
	if c.odCancel != nil {
		c.odCancel()
	}
	ctx, cancel := context.WithCancel(c.bgCtx)
	c.odCancel = cancel
	od := c.od
	c.bgWG.Add(1)
	go func() {
		defer c.bgWG.Done()
		od.Run(ctx)
	}()
}

func (c *Cluster) start(src discovery.Source) {
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.bgCtx, c.bgCancel = ctx, cancel
	c.runDetectorLocked()
	c.mu.Unlock()
	if src != nil {
		c.cancelWatch = src.Watch(c.Name, discovery.WatcherFuncs{
			Update:        c.onUpdate,
			ResourceError: c.onResourceError,
			AmbientError:  c.onAmbientError,
		})
	}
}

func (c *Cluster) close() {
	c.mu.Lock()
	c.closed = true
	if c.slowTimer != nil {
		c.slowTimer.Stop()
	}
	c.mu.Unlock()
	if c.cancelWatch != nil {
		c.cancelWatch()
	}
	if c.bgCancel != nil {
		c.bgCancel()
		c.bgWG.Wait()
	}
	c.mu.Lock()
	hc := c.hc
	c.mu.Unlock()
	if hc != nil {
		hc.Close()
	}
}

// Ready is closed once the first snapshot (or a definite resource error)
// has arrived.
func (c *Cluster) Ready() <-chan struct{} { return c.ready }

func (c *Cluster) markReady() {
	if !c.haveFirst {
		c.haveFirst = true
		close(c.ready)
	}
}

func (c *Cluster) onUpdate(s *discovery.Snapshot) {
	c.mu.Lock()
	c.lastFresh = time.Now()
	c.ambientErr = nil
	c.resourceErr = nil
	if c.snap != nil && c.snap.Version == s.Version && c.snap.Service == s.Service {
		c.mu.Unlock()
		return // a confirmation: data still fresh
	}
	if c.snap != nil && c.snap.Equal(s) {
		c.snap = s // a new version of the same endpoints: nothing to rebuild
		c.mu.Unlock()
		return
	}
	first := c.snap == nil && !c.haveFirst
	c.snap = s
	c.updates++
	now := time.Now()
	seen := make(map[string]bool, len(s.Endpoints))
	addrs := make([]string, 0, len(s.Endpoints))
	for _, ep := range s.Endpoints {
		seen[ep.Address] = true
		addrs = append(addrs, ep.Address)
		h, ok := c.hosts[ep.Address]
		if !ok {
			h = &Host{Addr: ep.Address, m: c.m.host(c.Name, ep.Address)}
			c.hosts[ep.Address] = h
			if first {
				h.eligibleSince = time.Time{} // initial hosts take full weight at once (Envoy)
			} else {
				h.eligibleSince = now
			}
		}
		h.inSnapshot = true
		h.priority, h.zone = ep.Priority, ep.Zone
		h.weight.Store(ep.Weight)
		h.mtls.Store(ep.MTLS)
		h.dhealth.Store(uint32(ep.Health))
	}
	removed := false
	for addr, h := range c.hosts {
		if !seen[addr] {
			h.inSnapshot = false
			delete(c.hosts, addr)
			c.m.dropHost(c.Name, addr)
			removed = true
		}
	}
	c.bindDetectorLocked(addrs)
	if c.hc != nil {
		c.hc.SetHosts(addrs)
	}
	c.markReady()
	drain := c.onRemoved
	c.mu.Unlock()
	if removed {
		for _, f := range drain {
			f() // close pooled idle connections, so removed hosts free their max_connections slots (Envoy drains their pools)
		}
	}
	c.m.discoveryUpdates.WithLabelValues(c.Name).Inc()
	c.log.Info("endpoints updated", "version", s.Version, "endpoints", len(s.Endpoints))
	c.rebuild()
}

func (c *Cluster) onResourceError(err error) {
	c.mu.Lock()
	c.resourceErr = err
	c.snap = nil
	for addr := range c.hosts {
		delete(c.hosts, addr)
		c.m.dropHost(c.Name, addr)
	}
	c.bindDetectorLocked(nil)
	if c.hc != nil {
		c.hc.SetHosts(nil)
	}
	c.markReady()
	for _, f := range c.onRemoved {
		defer f()
	}
	c.mu.Unlock()
	c.m.discoveryErrors.WithLabelValues(c.Name, "resource").Inc()
	c.log.Warn("upstream endpoints dropped", "err", err)
	c.rebuild()
}

// ambientWarnEvery bounds how often a run of the same discovery error is
// logged at warn (the source retries with backoff; each retry fails alike).
const ambientWarnEvery = time.Minute

func (c *Cluster) onAmbientError(err error) {
	c.mu.Lock()
	now := time.Now()
	if c.ambientErr == nil {
		c.ambientSince = now
	}
	warn := c.ambientErr == nil || c.ambientErr.Error() != err.Error() || now.Sub(c.ambientWarned) >= ambientWarnEvery
	if warn {
		c.ambientWarned = now
	}
	c.ambientErr = err
	had := c.snap != nil
	c.mu.Unlock()
	c.m.discoveryErrors.WithLabelValues(c.Name, "ambient").Inc()
	msg := "discovery trouble; keeping the last endpoints"
	if !had {
		msg = "discovery trouble; no endpoints yet"
	}
	if warn {
		c.log.Warn(msg, "err", err)
	} else {
		c.log.Debug(msg, "err", err)
	}
}

// rebuild recomputes the eligible set and swaps in new pickers, one per
// priority level, with Envoy's priority load (planPriorities). It is
// called on every discovery update, ejection change, health change and
// slow-start tick; never on the request path.
func (c *Cluster) rebuild() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed && c.hosts == nil {
		return
	}
	now := time.Now()
	all := make([]*Host, 0, len(c.hosts))
	for _, h := range c.hosts {
		all = append(all, h)
		ok := c.hostEligible(h)
		if ok && !h.eligible && h.everEligible && c.eff.SlowStart != nil {
			// returning from ejection or failed checks: ramp up again
			h.eligibleSince = now
		}
		if ok {
			h.everEligible = true
		}
		h.eligible = ok
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].priority != all[j].priority {
			return all[i].priority < all[j].priority
		}
		return all[i].Addr < all[j].Addr
	})
	// Group by priority level (all is sorted by priority, then address).
	var groups [][]*Host
	for i, h := range all {
		if i == 0 || h.priority != all[i-1].priority {
			groups = append(groups, nil)
		}
		groups[len(groups)-1] = append(groups[len(groups)-1], h)
	}
	counts := make([]levelCount, len(groups))
	for i, g := range groups {
		counts[i].Total = len(g)
		for _, h := range g {
			if h.eligible {
				counts[i].Healthy++
			}
		}
	}
	plan := planPriorities(counts, c.panicPct)
	st := &pickState{total: len(all), levels: make([]level, len(groups))}
	ramping := false
	if c.eff.SlowStart != nil {
		for _, h := range all {
			if !h.eligibleSince.IsZero() && now.Sub(h.eligibleSince) < c.eff.SlowStart.Window {
				ramping = true
			}
		}
	}
	loads := make([]float64, len(groups))
	for i, g := range groups {
		lv := &st.levels[i]
		lv.priority, lv.total, lv.healthy = g[0].priority, counts[i].Total, counts[i].Healthy
		lv.health, lv.panic = plan.Health[i], plan.Panic[i]
		var use []*Host
		for _, h := range g {
			// In panic a level balances over its hosts whatever their
			// checks say, except those its source calls unhealthy (a
			// Consul-critical instance never takes traffic).
			if h.eligible || (lv.panic && discovery.Health(h.dhealth.Load()) != discovery.Unhealthy) {
				use = append(use, h)
			}
		}
		if len(use) > 0 {
			loads[i] = plan.Load[i]
		}
		p, weights, err := c.levelPicker(use, now, ramping)
		if err != nil {
			c.log.Error("cannot build picker; keeping the previous one", "err", err)
			return
		}
		lv.picker, lv.hosts, lv.weights = p, use, weights
		lv.zones = make([]string, len(use))
		for j, h := range use {
			lv.zones[j] = h.zone
		}
		if c.eff.ZoneAware && c.localZone != "" {
			zr, zs, err := c.zoneRouteFor(g, use, lv.panic, c.origin, now, ramping)
			if err != nil {
				c.log.Error("cannot build zone pickers; keeping the previous ones", "err", err)
				return
			}
			lv.zr, lv.zs = zr, &zs
		}
		st.n += len(use)
	}
	// A level left with nothing to pick gives its load to the others.
	var sum float64
	for _, l := range loads {
		sum += l
	}
	for i := range st.levels {
		if sum > 0 {
			st.levels[i].load = 100 * loads[i] / sum
		}
		if st.levels[i].panic && st.levels[i].load > 0 {
			st.panic = true
		}
		c.m.priorityLoad.WithLabelValues(c.Name, strconv.FormatUint(uint64(st.levels[i].priority), 10)).Set(st.levels[i].load / 100)
	}
	c.dropStalePriorityMetricsLocked(st)
	st.cum = cumulative(loads)
	if st.panic {
		c.m.panic.WithLabelValues(c.Name).Set(1)
	} else {
		c.m.panic.WithLabelValues(c.Name).Set(0)
	}
	c.state.Store(st)
	if ramping && !c.closed {
		step := c.eff.SlowStart.Window / 20
		if step < 50*time.Millisecond {
			step = 50 * time.Millisecond
		}
		if c.slowTimer == nil {
			c.slowTimer = time.AfterFunc(step, c.rebuild)
		} else {
			c.slowTimer.Reset(step)
		}
	}
}

// levelPicker builds the picker of one priority level over use, with slow
// start applied when some host is ramping; it returns the effective
// weights by use index. The caller holds mu.
func (c *Cluster) levelPicker(use []*Host, now time.Time, ramping bool) (balancer.Picker, []uint32, error) {
	eps := make([]balancer.Endpoint, len(use))
	scale := uint32(1)
	if ramping {
		scale = 100 // resolution for fractional slow-start weights
	}
	for i, h := range use {
		w := h.weight.Load() * scale
		if ramping && !h.eligibleSince.IsZero() {
			w = slowStartWeight(w, now.Sub(h.eligibleSince), c.eff.SlowStart)
		}
		eps[i] = balancer.Endpoint{Address: h.Addr, Weight: w, Active: &h.Active}
	}
	weights := make([]uint32, len(use))
	for i := range eps {
		weights[i] = eps[i].Weight
		if scale > 1 {
			weights[i] = (eps[i].Weight + scale/2) / scale
			if weights[i] == 0 {
				weights[i] = 1
			}
		}
	}
	p, err := balancer.New(c.lbPolicy, c.lbConfig, eps, rand.Uint64())
	return p, weights, err
}

// dropStalePriorityMetricsLocked forgets the priority-load series of levels
// the cluster no longer has. The caller holds mu.
func (c *Cluster) dropStalePriorityMetricsLocked(st *pickState) {
	now := make(map[uint32]bool, len(st.levels))
	for _, lv := range st.levels {
		now[lv.priority] = true
	}
	for p := range c.prioSeen {
		if !now[p] {
			c.m.priorityLoad.DeleteLabelValues(c.Name, strconv.FormatUint(uint64(p), 10))
			delete(c.prioSeen, p)
		}
	}
	if c.prioSeen == nil {
		c.prioSeen = map[uint32]bool{}
	}
	for p := range now {
		c.prioSeen[p] = true
	}
}

// slowStartWeight is Envoy's slow start: weight · max(min_weight_percent,
// (t/window)^(1/aggression)).
func slowStartWeight(w uint32, age time.Duration, s *upstream.SlowStartConfig) uint32 {
	if age >= s.Window {
		return w
	}
	f := math.Pow(float64(age)/float64(s.Window), 1/s.Aggression)
	if min := s.MinWeightPercent / 100; f < min {
		f = min
	}
	nw := uint32(math.Round(float64(w) * f))
	if nw < 1 {
		nw = 1
	}
	return nw
}

// hostEligible: known healthy to its source, not ejected, passing checks.
func (c *Cluster) hostEligible(h *Host) bool {
	switch discovery.Health(h.dhealth.Load()) {
	case discovery.Unhealthy, discovery.Draining:
		return false
	}
	if od := h.outlier(); od != nil && od.Ejected() {
		return false
	}
	if c.hc != nil && !c.hc.Healthy(h.Addr) {
		return false
	}
	return true
}

// host returns the host for addr (dials are rare; a map lookup under the lock is fine).
func (c *Cluster) host(addr string) *Host {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hosts[addr]
}

// ClusterStatus is the /clusters view of one cluster.
type ClusterStatus struct {
	Name           string           `json:"name"`
	Listen         string           `json:"listen,omitempty"`
	Protocol       string           `json:"protocol"`
	LBPolicy       string           `json:"lb_policy"`
	Version        uint64           `json:"version"`
	Ready          bool             `json:"ready"`
	Panic          bool             `json:"panic_mode"`
	HealthyHosts   int              `json:"healthy_hosts"`
	TotalHosts     int              `json:"total_hosts"`
	LastUpdate     *time.Time       `json:"last_update,omitempty"`
	StaleSeconds   float64          `json:"stale_seconds"`
	DiscoveryError string           `json:"discovery_error,omitempty"`
	ResourceError  string           `json:"resource_error,omitempty"`
	Breaker        any              `json:"circuit_breakers"`
	Priorities     []PriorityStatus `json:"priorities"`
	// Datacenters is the datacenters behind the upstream (Consul), with
	// each one's priority and last query error.
	Datacenters []consul.DatacenterStatus `json:"datacenters,omitempty"`
	Endpoints   []EndpointStatus          `json:"endpoints"`
}

// PriorityStatus is the /clusters view of one priority level: its healthy
// share, its health (min(100, 1.4 x healthy share)) and the load it takes.
type PriorityStatus struct {
	Priority       uint32  `json:"priority"`
	HealthyHosts   int     `json:"healthy_hosts"`
	TotalHosts     int     `json:"total_hosts"`
	HealthyPercent float64 `json:"healthy_percent"`
	Health         float64 `json:"health"`
	LoadPercent    float64 `json:"load_percent"`
	Panic          bool    `json:"panic_mode"`
	// ZoneRouting is the zone-aware routing state (zone_aware upstreams).
	ZoneRouting *ZoneStatus `json:"zone_routing,omitempty"`
}

// EndpointStatus is the /clusters view of one endpoint.
type EndpointStatus struct {
	Address         string `json:"address"`
	Weight          uint32 `json:"weight"`
	EffectiveWeight uint32 `json:"effective_weight"`
	Health          string `json:"health"`
	RqTotal         uint64 `json:"rq_total"`
	RqError         uint64 `json:"rq_error"`
	RqActive        int64  `json:"rq_active"`
	CxActive        int64  `json:"cx_active"`
	EjectionsTotal  uint64 `json:"ejections_total"`
	HealthCheck     any    `json:"health_check,omitempty"`
	Priority        uint32 `json:"priority"`
	Zone            string `json:"zone,omitempty"`
}

// Status reports the cluster for /clusters.
func (c *Cluster) Status() ClusterStatus {
	// The pick state and the hosts' eligibility are read under mu, which
	// rebuild holds while it sets both: healthy_hosts, panic_mode and the
	// priorities tell one consistent story.
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.state.Load()
	cs := ClusterStatus{
		Name: c.Name, Listen: c.upstream().Listen, Protocol: c.upstream().Protocol, LBPolicy: c.lbPolicy,
		Ready: c.haveFirst, Panic: st.panic, TotalHosts: len(c.hosts),
		Breaker: c.breaker().Stats(),
	}
	if c.snap != nil {
		cs.Version = c.snap.Version
	}
	if !c.lastFresh.IsZero() {
		t := c.lastFresh
		cs.LastUpdate = &t
	}
	if c.ambientErr != nil {
		cs.DiscoveryError = c.ambientErr.Error()
		// How old the data in service is: since the source last vouched
		// for it (the same clock as sidemesh_discovery_stale_seconds).
		since := c.lastFresh
		if since.IsZero() {
			since = c.ambientSince
		}
		cs.StaleSeconds = time.Since(since).Seconds()
	}
	if c.resourceErr != nil {
		cs.ResourceError = c.resourceErr.Error()
	}
	eff := map[*Host]uint32{}
	for _, lv := range st.levels {
		for i, h := range lv.hosts {
			eff[h] = lv.weights[i]
		}
		cs.Priorities = append(cs.Priorities, PriorityStatus{
			Priority: lv.priority, HealthyHosts: lv.healthy, TotalHosts: lv.total,
			HealthyPercent: 100 * float64(lv.healthy) / float64(max(lv.total, 1)),
			Health:         lv.health, LoadPercent: lv.load, Panic: lv.panic,
			ZoneRouting: lv.zs,
		})
	}
	addrs := make([]string, 0, len(c.hosts))
	for a := range c.hosts {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	for _, a := range addrs {
		h := c.hosts[a]
		es := EndpointStatus{
			Address: a, Weight: h.weight.Load(), EffectiveWeight: eff[h],
			RqTotal: h.RqTotal.Load(), RqError: h.RqError.Load(),
			RqActive: h.Active.Load(), CxActive: h.CxActive.Load(),
			Priority: h.priority, Zone: h.zone,
		}
		switch {
		case discovery.Health(h.dhealth.Load()) == discovery.Draining:
			es.Health = "draining"
		case h.outlier() != nil && h.outlier().Ejected():
			es.Health = "ejected"
		case c.hc != nil && !c.hc.Healthy(a):
			es.Health = "failed_health_check"
		case discovery.Health(h.dhealth.Load()) == discovery.Unhealthy:
			es.Health = "unhealthy"
		default:
			es.Health = "healthy"
		}
		if h.eligible {
			cs.HealthyHosts++
		}
		if od := h.outlier(); od != nil {
			es.EjectionsTotal = od.Ejections()
		}
		if c.hc != nil {
			if hs, ok := c.hc.Status(a); ok {
				es.HealthCheck = hs
			}
		}
		cs.Endpoints = append(cs.Endpoints, es)
	}
	return cs
}

func (c *Cluster) String() string { return fmt.Sprintf("cluster %s", c.Name) }

// bindDetectorLocked tells the detector the host set and points every host
// at its detector state.
func (c *Cluster) bindDetectorLocked(addrs []string) {
	if c.od == nil {
		for _, h := range c.hosts {
			h.od.Store(nil)
		}
		return
	}
	c.od.SetHosts(addrs)
	for _, h := range c.hosts {
		h.od.Store(c.od.Host(h.Addr))
	}
}

// detector returns the outlier detector in force (nil when off).
func (c *Cluster) detector() *outlier.Detector {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.od
}
