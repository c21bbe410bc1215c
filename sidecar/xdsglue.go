package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"reflect"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/health"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
	"github.com/sidemesh/sidemesh/xds"
)

// xdsSettings maps every upstream to the xDS server's input.
func xdsSettings(cfg *Config) []xds.ClusterSettings {
	out := make([]xds.ClusterSettings, 0, len(cfg.Upstreams))
	for i := range cfg.Upstreams {
		out = append(out, toSettings(&cfg.Upstreams[i]))
	}
	return out
}

// toSettings maps one upstream (defaults filled) to ClusterSettings.
func toSettings(u *Upstream) xds.ClusterSettings {
	cs := xds.Defaults(u.Service)
	cs.LBPolicy = u.LBPolicy
	cs.ConnectTimeout = u.ConnectTimeout
	cs.LeastRequestChoiceCount = u.LB.LeastRequest.ChoiceCount
	bias := u.LB.LeastRequest.Bias()
	cs.ActiveRequestBias = &bias
	cs.RingMinSize, cs.RingMaxSize = u.LB.RingHash.MinimumRingSize, u.LB.RingHash.MaximumRingSize
	p := *u.HealthyPanicThreshold
	cs.HealthyPanicThreshold = &p
	o := u.OutlierDetection
	cs.Outlier = &xds.OutlierSettings{
		Consecutive5xx: *o.Consecutive5xx, ConsecutiveGatewayFailure: *o.ConsecutiveGatewayFailure,
		ConsecutiveLocalOriginFailure: *o.ConsecutiveLocalOriginFailure, Interval: o.Interval,
		BaseEjectionTime: o.BaseEjectionTime, MaxEjectionTime: o.MaxEjectionTime, MaxEjectionPercent: *o.MaxEjectionPercent,
		EnforcingConsecutive5xx: *o.EnforcingConsecutive5xx, EnforcingConsecutiveGatewayFailure: *o.EnforcingConsecutiveGatewayFailure,
		EnforcingConsecutiveLocalOriginFailure: *o.EnforcingConsecutiveLocalOriginFailure, EnforcingSuccessRate: *o.EnforcingSuccessRate,
		SuccessRateMinimumHosts: *o.SuccessRateMinimumHosts, SuccessRateRequestVolume: *o.SuccessRateRequestVolume,
		SuccessRateStdevFactor: *o.SuccessRateStdevFactor, EnforcingFailurePercentage: *o.EnforcingFailurePercentage,
		FailurePercentageThreshold: *o.FailurePercentageThreshold, FailurePercentageMinimumHosts: *o.FailurePercentageMinimumHosts,
		FailurePercentageRequestVolume: *o.FailurePercentageRequestVolume, SplitExternalLocalOriginErrors: o.SplitExternalLocalOriginErrors,
		SuccessfulActiveHealthCheckUnejectHost: *o.SuccessfulActiveHealthCheckUnejectHost, AlwaysEjectOneHost: *o.AlwaysEjectOneHost,
	}
	b := u.CircuitBreakers
	cs.Breakers = &xds.BreakerSettings{MaxConnections: *b.MaxConnections, MaxPendingRequests: *b.MaxPendingRequests,
		MaxRequests: *b.MaxRequests, MaxRetries: *b.MaxRetries}
	if rb := b.RetryBudget; rb != nil {
		cs.Breakers.RetryBudget = &xds.RetryBudget{BudgetPercent: *rb.BudgetPercent, MinRetryConcurrency: *rb.MinRetryConcurrency}
	}
	if hc := u.HealthCheck; hc != nil {
		hs := &xds.HealthCheckSettings{Interval: hc.Interval, Timeout: hc.Timeout,
			UnhealthyThreshold: uint32(hc.UnhealthyThreshold), HealthyThreshold: uint32(hc.HealthyThreshold), NoTrafficInterval: hc.NoTrafficInterval}
		switch {
		case hc.HTTP != nil:
			hs.HTTPPath = hc.HTTP.Path
		case hc.GRPC != nil:
			hs.GRPC, hs.GRPCServiceName = true, hc.GRPC.ServiceName
		default:
			hs.TCP = true
		}
		cs.HealthCheck = hs
	}
	return cs
}

func u32(v uint32) *uint32 { return &v }

// outlierFrom maps xDS outlier settings back to our config.
func outlierFrom(o *xds.OutlierSettings) outlier.Config {
	yes, eject := o.SuccessfulActiveHealthCheckUnejectHost, o.AlwaysEjectOneHost
	c := outlier.Config{
		Consecutive5xx: u32(o.Consecutive5xx), ConsecutiveGatewayFailure: u32(o.ConsecutiveGatewayFailure),
		ConsecutiveLocalOriginFailure: u32(o.ConsecutiveLocalOriginFailure), SplitExternalLocalOriginErrors: o.SplitExternalLocalOriginErrors,
		EnforcingConsecutive5xx: u32(o.EnforcingConsecutive5xx), EnforcingConsecutiveGatewayFailure: u32(o.EnforcingConsecutiveGatewayFailure),
		EnforcingConsecutiveLocalOriginFailure: u32(o.EnforcingConsecutiveLocalOriginFailure), Interval: o.Interval,
		BaseEjectionTime: o.BaseEjectionTime, MaxEjectionTime: o.MaxEjectionTime, MaxEjectionPercent: u32(o.MaxEjectionPercent),
		SuccessRateMinimumHosts: u32(o.SuccessRateMinimumHosts), SuccessRateRequestVolume: u32(o.SuccessRateRequestVolume),
		SuccessRateStdevFactor: u32(o.SuccessRateStdevFactor), EnforcingSuccessRate: u32(o.EnforcingSuccessRate),
		FailurePercentageThreshold: u32(o.FailurePercentageThreshold), FailurePercentageMinimumHosts: u32(o.FailurePercentageMinimumHosts),
		FailurePercentageRequestVolume: u32(o.FailurePercentageRequestVolume), EnforcingFailurePercentage: u32(o.EnforcingFailurePercentage),
		SuccessfulActiveHealthCheckUnejectHost: &yes, AlwaysEjectOneHost: &eject,
	}
	c.SetDefaults()
	return c
}

func breakerFrom(b *xds.BreakerSettings) breaker.Config {
	c := breaker.Config{MaxConnections: u32(b.MaxConnections), MaxPendingRequests: u32(b.MaxPendingRequests),
		MaxRequests: u32(b.MaxRequests), MaxRetries: u32(b.MaxRetries)}
	if rb := b.RetryBudget; rb != nil {
		pct := rb.BudgetPercent
		c.RetryBudget = &breaker.RetryBudgetConfig{BudgetPercent: &pct, MinRetryConcurrency: u32(rb.MinRetryConcurrency)}
	}
	c.SetDefaults()
	return c
}

func healthFrom(h *xds.HealthCheckSettings) health.Config {
	c := health.Config{Interval: h.Interval, Timeout: h.Timeout, UnhealthyThreshold: int(h.UnhealthyThreshold),
		HealthyThreshold: int(h.HealthyThreshold), NoTrafficInterval: h.NoTrafficInterval}
	switch {
	case h.HTTPPath != "":
		c.HTTP = &health.HTTPCheck{Path: h.HTTPPath}
	case h.GRPC:
		c.GRPC = &health.GRPCCheck{ServiceName: h.GRPCServiceName}
	default:
		c.TCP = &health.TCPCheck{}
	}
	c.SetDefaults()
	return c
}

// applySettings applies cluster settings received over CDS. The rule: a
// key set in the local config file wins; every key it leaves out takes the
// control plane's value. Swaps happen without dropping requests: a request
// keeps the breaker it started with; ejection and health state restart
// under the new settings.
func (c *Cluster) applySettings(cs xds.ClusterSettings) {
	u := c.cfg
	c.mu.Lock()
	if c.closed || reflect.DeepEqual(c.lastCDS, &cs) {
		c.mu.Unlock()
		return
	}
	// Each of breaker, detector and checker is rebuilt only when its own
	// settings changed: a new one starts from scratch (ejections forgotten,
	// every host unhealthy until checked again).
	prev := c.lastCDS
	changed := func(a, b any) bool { return prev == nil || !reflect.DeepEqual(a, b) }
	var prevBr, prevOD, prevHC any
	if prev != nil {
		prevBr, prevOD, prevHC = prev.Breakers, prev.Outlier, prev.HealthCheck
	}
	c.lastCDS = &cs
	var oldHC *health.Checker
	if !u.IsSet("lb_policy") && cs.LBPolicy != "" {
		c.lbPolicy = cs.LBPolicy
		pol := cs.LBPolicy
		c.policy.Store(&pol)
	}
	lb := c.lbConfig
	if !u.IsSet("least_request_lb_config") {
		if cs.LeastRequestChoiceCount >= 2 {
			lb.LeastRequest.ChoiceCount = cs.LeastRequestChoiceCount
		}
		if cs.ActiveRequestBias != nil {
			b := *cs.ActiveRequestBias
			lb.LeastRequest.ActiveRequestBias = &b
		}
	}
	if !u.IsSet("ring_hash_lb_config") && cs.RingMinSize > 0 && cs.RingMaxSize >= cs.RingMinSize {
		lb.RingHash.MinimumRingSize, lb.RingHash.MaximumRingSize = cs.RingMinSize, cs.RingMaxSize
	}
	// Options the picker would refuse (a negative bias, a ring above 8M)
	// would make every later rebuild fail, freezing the endpoints in force.
	if err := lb.Validate(""); err != nil {
		c.log.Warn("lb options from xDS ignored", "err", err)
	} else {
		c.lbConfig = lb
	}
	if !u.IsSet("healthy_panic_threshold") && cs.HealthyPanicThreshold != nil {
		c.panicPct = *cs.HealthyPanicThreshold
	}
	if !u.IsSet("connect_timeout") && cs.ConnectTimeout > 0 {
		c.connTO.Store(int64(cs.ConnectTimeout))
	}
	if !u.IsSet("circuit_breakers") && cs.Breakers != nil && changed(prevBr, cs.Breakers) {
		c.br.Store(breaker.New(breakerFrom(cs.Breakers)))
	}
	if !u.IsSet("outlier_detection") && cs.Outlier != nil && !c.inbound && changed(prevOD, cs.Outlier) {
		c.od = c.newDetector(outlierFrom(cs.Outlier))
		addrs := make([]string, 0, len(c.hosts))
		for a := range c.hosts {
			addrs = append(addrs, a)
		}
		c.bindDetectorLocked(addrs)
		c.runDetectorLocked()
	}
	if !u.IsSet("health_check") && cs.HealthCheck != nil && changed(prevHC, cs.HealthCheck) {
		oldHC = c.hc
		c.hc = c.newChecker(healthFrom(cs.HealthCheck))
		addrs := make([]string, 0, len(c.hosts))
		for a := range c.hosts {
			addrs = append(addrs, a)
		}
		c.hc.SetHosts(addrs)
	}
	c.mu.Unlock()
	if oldHC != nil {
		oldHC.Close()
	}
	c.log.Info("cluster settings from xDS applied (keys in the local file win)", "lb_policy", c.policyName())
	c.rebuild()
}

// XDSApplied reports whether cluster settings have arrived over CDS.
func (c *Cluster) XDSApplied() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastCDS != nil
}

// ControlPlane is `sidemesh xds`: the configured discovery source feeding
// the embedded xDS server, with nothing else.
type ControlPlane struct {
	cfg  *Config
	log  *slog.Logger
	src  discovery.Source
	srv  *xds.Server
	ln   net.Listener
	done chan struct{}
}

// NewControlPlane builds the xDS server from a config (discovery + upstreams).
func NewControlPlane(cfg *Config, log *slog.Logger) (*ControlPlane, error) {
	if cfg.Discovery.XDS != nil {
		return nil, fmt.Errorf("%w: discovery.xds: the xDS server needs a source of truth (file or consul), not another xDS server", ErrConfig)
	}
	s := &Sidecar{cfg: cfg, log: log}
	src, err := s.newSource()
	if err != nil {
		return nil, err
	}
	if src == nil {
		return nil, fmt.Errorf("%w: discovery: set file or consul as the xDS server's source of truth", ErrConfig)
	}
	srv, err := xds.NewServer(xds.ServerOptions{Logger: log.With("component", "xds-server"), Source: src, Settings: xdsSettings(cfg)})
	if err != nil {
		src.Close()
		return nil, err
	}
	return &ControlPlane{cfg: cfg, log: log, src: src, srv: srv}, nil
}

// Start binds xds_server.listen and serves.
func (cp *ControlPlane) Start() error {
	ln, err := net.Listen("tcp", cp.cfg.XDSServer.Listen)
	if err != nil {
		return fmt.Errorf("xds_server.listen %s: %w", cp.cfg.XDSServer.Listen, err)
	}
	cp.ln, cp.done = ln, make(chan struct{})
	go func() {
		defer close(cp.done)
		if err := cp.srv.Serve(ln); err != nil {
			cp.log.Error("xds server stopped", "err", err)
		}
	}()
	cp.log.Info("xds server started", "listen", ln.Addr().String(), "clusters", len(cp.cfg.Upstreams))
	return nil
}

// Addr is the bound address.
func (cp *ControlPlane) Addr() string { return cp.ln.Addr().String() }

// Stop stops serving and closes the source.
func (cp *ControlPlane) Stop(ctx context.Context) {
	cp.srv.Stop()
	if cp.done != nil {
		select {
		case <-cp.done:
		case <-ctx.Done():
		}
	}
	_ = cp.src.Close()
}
