package outlier

import (
	"context"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Options are a Detector's collaborators.
type Options struct {
	// Logger receives ejection and un-ejection events; nil discards them.
	Logger *slog.Logger
	// OnChange is called whenever the set of ejected hosts changes, so that
	// the cluster rebuilds its picker. It is called outside the detector's
	// locks, possibly from several goroutines at once (Run's and those
	// calling Record), and after the change is visible through
	// Host.Ejected: it should read the current state rather than count
	// calls, and should not block (a non-blocking send on a channel of
	// capacity 1 is the intended shape). It is not called by SetHosts.
	OnChange func()
	// Rand draws ejection jitter and the enforcing_* percentages. It is
	// only used under the detector's mutex. Nil means a randomly seeded
	// source; tests pass a seeded one.
	Rand *rand.Rand
}

// origin indexes the two success-rate monitors.
type origin int

const (
	external origin = iota // HTTP statuses; all results when not split
	local                  // local-origin results, split mode only
)

// params is a Config with defaults applied, in the shape the code uses.
type params struct {
	split         bool
	consecutive   [ConsecutiveLocalOriginFailure + 1]uint32 // 0: disabled
	enforcing     [NumEjectionTypes]uint32
	interval      time.Duration
	base          time.Duration
	maxEject      time.Duration
	jitter        time.Duration
	maxEjectPct   float64
	srMinHosts    uint64
	srVolume      uint64
	srStdevFactor float64
	fpThreshold   float64
	fpMinHosts    uint64
	fpVolume      uint64
	hcUneject     bool
	ejectOne      bool
}

func newParams(cfg Config) params {
	cfg.SetDefaults()
	return params{
		split: cfg.SplitExternalLocalOriginErrors,
		consecutive: [...]uint32{
			Consecutive5xx:                *cfg.Consecutive5xx,
			ConsecutiveGatewayFailure:     *cfg.ConsecutiveGatewayFailure,
			ConsecutiveLocalOriginFailure: *cfg.ConsecutiveLocalOriginFailure,
		},
		enforcing: [...]uint32{
			Consecutive5xx:                *cfg.EnforcingConsecutive5xx,
			ConsecutiveGatewayFailure:     *cfg.EnforcingConsecutiveGatewayFailure,
			ConsecutiveLocalOriginFailure: *cfg.EnforcingConsecutiveLocalOriginFailure,
			SuccessRate:                   *cfg.EnforcingSuccessRate,
			SuccessRateLocalOrigin:        *cfg.EnforcingLocalOriginSuccessRate,
			FailurePercentage:             *cfg.EnforcingFailurePercentage,
			FailurePercentageLocalOrigin:  *cfg.EnforcingFailurePercentageLocalOrigin,
		},
		interval: cfg.Interval,
		base:     cfg.BaseEjectionTime,
		// Envoy refuses max < base; an unvalidated config gets base.
		maxEject:      max(cfg.MaxEjectionTime, cfg.BaseEjectionTime),
		jitter:        max(cfg.MaxEjectionTimeJitter, 0),
		maxEjectPct:   float64(min(*cfg.MaxEjectionPercent, 100)),
		srMinHosts:    uint64(*cfg.SuccessRateMinimumHosts),
		srVolume:      uint64(*cfg.SuccessRateRequestVolume),
		srStdevFactor: float64(*cfg.SuccessRateStdevFactor) / 1000,
		fpThreshold:   float64(*cfg.FailurePercentageThreshold),
		fpMinHosts:    uint64(*cfg.FailurePercentageMinimumHosts),
		fpVolume:      uint64(*cfg.FailurePercentageRequestVolume),
		hcUneject:     *cfg.SuccessfulActiveHealthCheckUnejectHost,
		ejectOne:      *cfg.AlwaysEjectOneHost,
	}
}

// Detector is the outlier detector of one upstream cluster: it tracks every
// host of the cluster by address and decides which are ejected.
//
// Concurrency: every method is safe for concurrent use. Host.Record and
// Host.Ejected, the request-path calls, take no lock unless the result
// completes a consecutive-error streak; everything else serialises on one
// mutex.
type Detector struct {
	p        params
	log      *slog.Logger
	onChange func()
	byAddr   atomic.Pointer[map[string]*Host] // immutable map, replaced by SetHosts

	mu       sync.Mutex
	rand     *rand.Rand
	hosts    []*Host // current hosts, in SetHosts order
	ejected  int     // ejected hosts among hosts
	overflow uint64
	detected [NumEjectionTypes]uint64
	enforced [NumEjectionTypes]uint64
	srAvg    [2]float64 // by origin; -1 when not computed last interval
	srCut    [2]float64
	scratch  [2][]rated // reused by evaluate
}

type rated struct {
	h    *Host
	rate float64 // success rate in percent
}

// New returns a detector for cfg, which should have passed Validate; unset
// keys take their defaults. It tracks no hosts until SetHosts. Time-based
// detection needs Run.
func New(cfg Config, opts Options) *Detector {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := opts.Rand
	if r == nil {
		r = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	d := &Detector{
		p:        newParams(cfg),
		log:      log.With("component", "outlier"),
		onChange: opts.OnChange,
		rand:     r,
		srAvg:    [2]float64{-1, -1},
		srCut:    [2]float64{-1, -1},
	}
	d.byAddr.Store(&map[string]*Host{})
	return d
}

// SetHosts replaces the set of tracked hosts. A host whose address stays in
// the set keeps its state (counters, ejection, multiplier); a new address
// starts fresh; a removed address loses its state, and its *Host keeps
// accepting Record calls without effect. Duplicate addresses count once.
func (d *Detector) SetHosts(addrs []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := *d.byAddr.Load()
	m := make(map[string]*Host, len(addrs))
	hosts := make([]*Host, 0, len(addrs))
	for _, a := range addrs {
		if _, dup := m[a]; dup {
			continue
		}
		h := old[a]
		if h == nil {
			h = d.newHost(a)
		}
		m[a] = h
		hosts = append(hosts, h)
	}
	for a, h := range old {
		if m[a] == nil {
			h.removed = true
			if h.ejected.Load() {
				d.ejected--
			}
		}
	}
	d.hosts = hosts
	d.byAddr.Store(&m)
}

// Host returns the tracked host with this address, or nil. It takes no
// lock; callers on the request path may keep the *Host instead.
func (d *Detector) Host(addr string) *Host {
	return (*d.byAddr.Load())[addr]
}

// Uneject returns an ejected host to service at once, as Envoy does after a
// successful active health check when successful_active_health_check_uneject_host
// is true (the default); the caller checks that the host is not failing
// its active health check. It reports whether the host was unejected; with
// the option false it does nothing.
func (d *Detector) Uneject(addr string) bool {
	if !d.p.hcUneject {
		return false
	}
	d.mu.Lock()
	h := d.Host(addr)
	if h == nil || h.removed || !h.ejected.Load() {
		d.mu.Unlock()
		return false
	}
	d.unejectLocked(h, time.Now(), "active health check passed")
	d.mu.Unlock()
	d.notify()
	return true
}

// Run evaluates the cluster every interval until ctx is done: it returns
// hosts whose ejection time has passed to service, runs the success-rate
// and failure-percentage detectors over the interval that just ended, and
// decays the multiplier of healthy hosts. As in Envoy, un-ejection happens
// on these ticks, so an ejection lasts its ejection time rounded up to the
// next tick. Consecutive-error ejections do not wait for Run.
func (d *Detector) Run(ctx context.Context) {
	t := time.NewTicker(d.p.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.tick(time.Now())
		}
	}
}

// tick is Envoy's DetectorImpl::onIntervalTimer.
func (d *Detector) tick(now time.Time) {
	d.mu.Lock()
	changed := false
	for _, h := range d.hosts {
		if h.ejected.Load() && now.Sub(h.lastEjection) >= h.ejectionTime(&d.p) {
			d.unejectLocked(h, now, "ejection time elapsed")
			changed = true
		}
		for o := range h.current {
			h.last[o] = h.rotate(origin(o))
			h.successRate[o] = -1
		}
	}
	for _, o := range [...]origin{external, local} {
		if d.evaluateLocked(o, now) {
			changed = true
		}
	}
	// Decay the multiplier of hosts that have stayed in service for an
	// interval since their last un-ejection.
	for _, h := range d.hosts {
		if !h.ejected.Load() && !h.lastUnejection.IsZero() &&
			now.Sub(h.lastUnejection) >= d.p.interval && h.backoff > 0 {
			h.backoff--
		}
	}
	d.mu.Unlock()
	if changed {
		d.notify()
	}
}

// evaluateLocked is Envoy's processSuccessRateEjections for one origin: the
// success-rate detector (hosts below mean − stdev_factor·stdev, population
// standard deviation) and the failure-percentage detector (hosts whose
// failure percentage is at least the threshold), each over the hosts in
// service with enough requests in the last interval.
func (d *Detector) evaluateLocked(o origin, now time.Time) bool {
	p := &d.p
	d.srAvg[o], d.srCut[o] = -1, -1
	n := uint64(len(d.hosts))
	if n < p.srMinHosts && n < p.fpMinHosts {
		return false
	}
	sr, fp := d.scratch[0][:0], d.scratch[1][:0]
	sum := 0.0
	for _, h := range d.hosts {
		if h.ejected.Load() {
			continue
		}
		c := h.last[o]
		if c.total == 0 {
			continue
		}
		rate := float64(c.success) * 100 / float64(c.total)
		if c.total >= min(p.srVolume, p.fpVolume) {
			h.successRate[o] = rate
		}
		if c.total >= p.srVolume {
			sr = append(sr, rated{h, rate})
			sum += rate
		}
		if c.total >= p.fpVolume {
			fp = append(fp, rated{h, rate})
		}
	}
	d.scratch[0], d.scratch[1] = sr, fp

	changed := false
	if len(sr) > 0 && uint64(len(sr)) >= p.srMinHosts {
		mean := sum / float64(len(sr))
		variance := 0.0
		for _, r := range sr {
			variance += (r.rate - mean) * (r.rate - mean)
		}
		variance /= float64(len(sr))
		cut := mean - p.srStdevFactor*math.Sqrt(variance)
		d.srAvg[o], d.srCut[o] = mean, cut
		t := SuccessRate
		if o == local {
			t = SuccessRateLocalOrigin
		}
		for _, r := range sr {
			if r.rate < cut {
				d.detected[t]++
				if d.ejectLocked(r.h, t, now) {
					changed = true
				}
			}
		}
	}
	if len(fp) > 0 && uint64(len(fp)) >= p.fpMinHosts {
		t := FailurePercentage
		if o == local {
			t = FailurePercentageLocalOrigin
		}
		for _, r := range fp {
			// A host the success-rate pass just ejected is not ejected
			// twice.
			if 100-r.rate >= p.fpThreshold && !r.h.ejected.Load() {
				d.detected[t]++
				if d.ejectLocked(r.h, t, now) {
					changed = true
				}
			}
		}
	}
	clear(sr) // drop *Host references until the next tick
	clear(fp)
	return changed
}

// onConsecutive is called by Record when a consecutive-error counter reaches
// its threshold (Envoy's onConsecutiveErrorWorker).
func (d *Detector) onConsecutive(h *Host, t EjectionType) {
	d.mu.Lock()
	if h.removed || h.ejected.Load() {
		d.mu.Unlock()
		return
	}
	d.detected[t]++
	changed := d.ejectLocked(h, t, time.Now())
	// Reset the streak whether or not the ejection was enforced, so that a
	// new streak of the same length is detected again (as Envoy does).
	h.consecutive[t].Store(0)
	d.mu.Unlock()
	if changed {
		d.notify()
	}
}

// ejectLocked is Envoy's DetectorImpl::ejectHost. It reports whether h was
// ejected.
//
// max_ejection_percent: a host is ejected only if the ejected hosts,
// counting it, stay within max_ejection_percent of the cluster; with
// always_eject_one_host (our default, unlike Envoy's; see
// envoyproxy/envoy#27909) one host may be ejected when none is.
func (d *Detector) ejectLocked(h *Host, t EjectionType, now time.Time) bool {
	p := &d.p
	pct := 100 * float64(d.ejected+1) / float64(len(d.hosts))
	if !(pct <= p.maxEjectPct || (p.ejectOne && d.ejected == 0)) {
		d.overflow++
		if d.log.Enabled(context.Background(), slog.LevelDebug) {
			d.log.Debug("outlier: ejection refused by max_ejection_percent",
				"address", h.addr, "type", t.String(), "ejected", d.ejected, "hosts", len(d.hosts))
		}
		return false
	}
	if !d.enforce(t) {
		if d.log.Enabled(context.Background(), slog.LevelDebug) {
			d.log.Debug("outlier: ejection not enforced", "address", h.addr, "type", t.String())
		}
		return false
	}
	d.ejected++
	d.enforced[t]++
	h.lastEjection = now
	h.jitter = 0
	if p.jitter > 0 {
		h.jitter = time.Duration(d.rand.Int64N(int64(p.jitter) + 1))
	}
	// The multiplier grows by one per ejection until base×multiplier passes
	// max_ejection_time (Envoy's bound), so that it decays back from there.
	if time.Duration(h.backoff)*p.base < p.maxEject+p.base {
		h.backoff++
	}
	dur := h.ejectionTime(p)
	h.ejectedUntil.Store(now.Add(dur).UnixNano())
	h.ejections.Add(1)
	h.ejected.Store(true)
	d.log.Info("outlier: host ejected", "address", h.addr, "type", t.String(),
		"duration", dur, "multiplier", h.backoff, "ejections_total", h.ejections.Load())
	return true
}

// enforce rolls the enforcing_* percentage of t (Envoy's featureEnabled:
// random % 100 < percent).
func (d *Detector) enforce(t EjectionType) bool {
	pct := d.p.enforcing[t]
	if pct >= 100 {
		return true
	}
	return pct > 0 && uint32(d.rand.IntN(100)) < pct
}

func (d *Detector) unejectLocked(h *Host, now time.Time, why string) {
	d.ejected--
	h.ejected.Store(false)
	h.ejectedUntil.Store(0)
	h.lastUnejection = now
	// Fresh streaks, so that a counter left near its threshold does not
	// eject the host again after a single error.
	for i := range h.consecutive {
		h.consecutive[i].Store(0)
	}
	d.log.Info("outlier: host returned to service", "address", h.addr, "reason", why)
}

func (d *Detector) notify() {
	if d.onChange != nil {
		d.onChange()
	}
}

func (d *Detector) newHost(addr string) *Host {
	h := &Host{addr: addr, d: d, successRate: [2]float64{-1, -1}}
	for o := range h.current {
		h.current[o].Store(new(bucket))
		h.spare[o] = new(bucket)
	}
	return h
}

// HostStats is one host's outlier state, for /clusters and /metrics.
type HostStats struct {
	Address        string `json:"address"`
	Ejected        bool   `json:"ejected"`
	EjectionsTotal uint64 `json:"ejections_total"`
	// Multiplier is the current backoff: the next ejection lasts
	// base_ejection_time × (Multiplier+1), capped at max_ejection_time.
	Multiplier uint32 `json:"multiplier"`
	// EjectedUntil is when the ejection time ends (zero when not ejected);
	// the host returns on the first interval tick from then.
	EjectedUntil time.Time `json:"ejected_until,omitzero"`
	// SuccessRate is the percentage of successes over the last interval
	// (of HTTP statuses in split mode, of all results otherwise), or -1 when
	// the host had fewer requests than both request volumes.
	SuccessRate float64 `json:"success_rate"`
	// LocalOriginSuccessRate is the same for local-origin results (split
	// mode only; -1 otherwise).
	LocalOriginSuccessRate float64 `json:"local_origin_success_rate"`
}

// Stats is a snapshot of a detector. Per-type counters are indexed by
// EjectionType.
type Stats struct {
	Hosts             []HostStats `json:"hosts"`
	EjectionsActive   int         `json:"ejections_active"`
	EjectionsOverflow uint64      `json:"ejections_overflow"`
	// EjectionsDetected counts outliers found, EjectionsEnforced those
	// actually ejected (Envoy's ejections_detected_* / ejections_enforced_*).
	EjectionsDetected [NumEjectionTypes]uint64 `json:"ejections_detected"`
	EjectionsEnforced [NumEjectionTypes]uint64 `json:"ejections_enforced"`
	// SuccessRateAverage and SuccessRateEjectionThreshold are the mean and
	// the cut of the last success-rate evaluation, -1 when too few hosts
	// had enough requests.
	SuccessRateAverage                      float64 `json:"success_rate_average"`
	SuccessRateEjectionThreshold            float64 `json:"success_rate_ejection_threshold"`
	LocalOriginSuccessRateAverage           float64 `json:"local_origin_success_rate_average"`
	LocalOriginSuccessRateEjectionThreshold float64 `json:"local_origin_success_rate_ejection_threshold"`
}

// CanEnforce reports whether ejections of type t can be enforced under
// the detector's config: its enforcing_* percentage is above 0, a
// consecutive_* type has a threshold, and the local-origin types need
// split_external_local_origin_errors. The counters of other types stay 0.
func (d *Detector) CanEnforce(t EjectionType) bool {
	if t >= NumEjectionTypes || d.p.enforcing[t] == 0 {
		return false
	}
	switch t {
	case ConsecutiveLocalOriginFailure, SuccessRateLocalOrigin, FailurePercentageLocalOrigin:
		if !d.p.split {
			return false
		}
	}
	if int(t) < len(d.p.consecutive) { // the consecutive_* types
		return d.p.consecutive[t] != 0
	}
	return true
}

// Counters is Stats without the per-host part (for /metrics: it allocates
// nothing per host).
func (d *Detector) Counters() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.countersLocked()
}

func (d *Detector) countersLocked() Stats {
	return Stats{
		EjectionsActive:                         d.ejected,
		EjectionsOverflow:                       d.overflow,
		EjectionsDetected:                       d.detected,
		EjectionsEnforced:                       d.enforced,
		SuccessRateAverage:                      d.srAvg[external],
		SuccessRateEjectionThreshold:            d.srCut[external],
		LocalOriginSuccessRateAverage:           d.srAvg[local],
		LocalOriginSuccessRateEjectionThreshold: d.srCut[local],
	}
}

// Stats returns a snapshot; hosts are in SetHosts order.
func (d *Detector) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.countersLocked()
	s.Hosts = make([]HostStats, len(d.hosts))
	for i, h := range d.hosts {
		s.Hosts[i] = HostStats{
			Address:                h.addr,
			Ejected:                h.ejected.Load(),
			EjectionsTotal:         h.ejections.Load(),
			Multiplier:             h.backoff,
			EjectedUntil:           h.EjectedUntil(),
			SuccessRate:            h.successRate[external],
			LocalOriginSuccessRate: h.successRate[local],
		}
	}
	return s
}
