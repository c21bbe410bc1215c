package sidecar

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/discovery/consul"
	"github.com/sidemesh/sidemesh/discovery/file"
	"github.com/sidemesh/sidemesh/tracing"
	"github.com/sidemesh/sidemesh/xds"
)

// Version is set at build time (-ldflags -X).
var Version = "dev"

// Options carry what the config file does not: logger and injected parts.
type Options struct {
	Logger *slog.Logger
	// Source overrides the configured discovery source (tests, demo).
	Source discovery.Source
	// Stdout is where access_log.path stdout writes (default os.Stdout).
	Stdout io.Writer
	// ConfigFile is the file the config came from: SIGHUP, POST /reload
	// and WatchConfigFile reload it.
	ConfigFile string
	// Level is the level Logger's handler reads, which POST /logging sets.
	// Nil: the sidecar gates Logger with a level of its own (log_level).
	Level *slog.LevelVar
}

// Sidecar is one running data plane.
type Sidecar struct {
	cfg      *Config
	log      *slog.Logger
	m        *Metrics
	src      discovery.Source
	ownSrc   bool
	clMu     sync.RWMutex // guards clusters, byName, outbound, servers (a reload replaces them)
	clusters []*Cluster
	byName   map[string]*Cluster
	inbound  *Cluster
	tp       *tracing.Provider
	mesh     *meshTLS // mtls (nil: off)

	hmu           sync.Mutex
	tcpClosed     bool // Shutdown closed the TCP proxies; later ones start closed
	tcpByCluster  map[*Cluster]*tcpProxy
	httpByCluster map[*Cluster]http.Handler
	transLn       net.Listener
	trans         *transparentListener
	consul        *consul.Source
	failover      *failoverSource // the Consul source through failover datacenters
	zone          string          // the sidecar's own zone (zone, or the Consul node meta)
	reg           *consul.Registrar
	regStop       context.CancelFunc
	regDone       chan struct{}
	xdsCli        *xds.Client
	xdsSrv        *xds.Server
	xdsLn         net.Listener

	admin      *http.Server
	adminLn    net.Listener
	probe      *http.Server
	probeLn    net.Listener
	regAddr    string // the address registered in Consul
	servers    []*h1Server
	outbound   []namedListener
	inboundLn  net.Listener
	inboundSrv *h1Server
	tcp        []*tcpProxy
	bound      atomic.Bool
	draining   atomic.Bool // Shutdown runs
	drained    atomic.Bool // POST /drain_listeners (until /undrain)
	level      *slog.LevelVar
	// reload: reloadMu serialises reloads and Shutdown's stopping flag.
	reloadMu sync.Mutex
	stopping bool
	cfgFile  string
	reloads  *prometheus.CounterVec
	lnServer map[net.Listener]*h1Server // guarded by clMu

	alog        atomic.Pointer[accessLog] // nil: off
	alogDropped prometheus.Counter
	stdout      io.Writer
	// inboundClosing: the drain's inbound grace runs (Connection: close).
	inboundClosing atomic.Bool
	act            activity // outbound work in flight, for the drain
	wg             sync.WaitGroup
	stopOnce       sync.Once
	quit           chan struct{}
	closers        []func()
}

// New builds a sidecar from a validated config. Nothing is bound yet.
func New(cfg *Config, opts Options) (*Sidecar, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lv := opts.Level
	if lv == nil {
		lv = new(slog.LevelVar)
		lv.Set(slog.LevelDebug) // no log_level: Logger's handler decides
		if l, ok := parseLevel(cfg.LogLevel); ok {
			lv.Set(l)
		}
		log = slog.New(levelGate{log.Handler(), lv})
	}
	s := &Sidecar{cfg: cfg, log: log, m: newMetricsWith(cfg.Metrics.PerEndpoint), byName: map[string]*Cluster{}, quit: make(chan struct{}),
		tcpByCluster: map[*Cluster]*tcpProxy{}, httpByCluster: map[*Cluster]http.Handler{}}
	s.act.draining = &s.draining
	s.level = lv
	s.cfgFile = opts.ConfigFile
	s.lnServer = map[net.Listener]*h1Server{}
	s.reloads = newReloadsCounter()
	s.alogDropped = newAccessLogDropped()
	s.m.Registry.MustRegister(s.reloads, s.alogDropped)
	s.stdout = opts.Stdout
	if s.stdout == nil {
		s.stdout = os.Stdout
	}
	s.src = opts.Source
	if s.src == nil {
		src, err := s.newSource()
		if err != nil {
			return nil, err
		}
		s.src, s.ownSrc = src, true
	}
	if err := s.setupTracing(); err != nil {
		return nil, err
	}
	s.setupMTLS()
	for i := range cfg.Upstreams {
		u := &cfg.Upstreams[i]
		c := newCluster(u, s.m, s.tp, log)
		c.setMesh(s.mesh)
		s.clusters = append(s.clusters, c)
		s.byName[u.Service] = c
	}
	s.m.Registry.MustRegister(stateCollector{s})
	if sv := cfg.Service; sv != nil && sv.Inbound != "" {
		s.inbound = newInboundCluster(sv, s.m, s.tp, log)
	}
	if s.consul != nil && cfg.Service != nil {
		addr, err := registeredAddress(cfg)
		if err != nil {
			return nil, err
		}
		s.regAddr = addr
	}
	if _, err := s.setAccessLog(cfg.AccessLog); err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.source, err)
	}
	return s, nil
}

func (s *Sidecar) newSource() (discovery.Source, error) {
	if s.cfg.Discovery.XDS != nil {
		return s.newXDSSource()
	}
	src, cons, err := newSource(s.cfg, s.log)
	s.consul = cons
	s.failover, _ = src.(*failoverSource)
	return src, err
}

// newSource opens the file or Consul source cfg's discovery names (nil,
// nil when it names neither); the Consul source is also returned as such,
// and watched through its failover datacenters.
func newSource(cfg *Config, log *slog.Logger) (discovery.Source, *consul.Source, error) {
	d := cfg.Discovery
	switch {
	case d.File != "":
		src, err := file.New(d.File, file.Options{Logger: log})
		return src, nil, err
	case d.Consul != nil:
		src, err := consul.New(*d.Consul, consul.Options{Logger: log})
		if err != nil {
			return nil, nil, err
		}
		return newFailoverSource(src, cfg), src, nil
	}
	return nil, nil, nil
}

// Start binds every listener (failing fast, before serving anything) and
// starts serving and watching.
func (s *Sidecar) Start() error {
	if err := s.checkStartConfig(); err != nil {
		return err
	}
	var err error
	s.adminLn, err = net.Listen("tcp", s.cfg.Admin.Address)
	if err != nil {
		return fmt.Errorf("admin %s: %w", s.cfg.Admin.Address, err)
	}
	if p := s.cfg.Probe; p != "" && p != ProbeOff {
		s.probeLn, err = net.Listen("tcp", p)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("probe %s: %w", p, err)
		}
	}
	for _, c := range s.clusters {
		if c.cfg.Listen == "" {
			continue
		}
		ln, err := net.Listen("tcp", c.cfg.Listen)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("upstream %s listen %s: %w", c.Name, c.cfg.Listen, err)
		}
		s.outbound = append(s.outbound, namedListener{c.Name, ln})
	}
	if s.inbound != nil {
		s.inboundLn, err = net.Listen("tcp", s.inbound.cfg.Listen)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("service.inbound %s: %w", s.inbound.cfg.Listen, err)
		}
		s.inboundLn = s.wrapInbound(s.inboundLn)
	}
	if t := s.cfg.Transparent; t != nil {
		s.transLn, err = listenTransparent(t.Listen)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("transparent.listen %s: %w", t.Listen, err)
		}
	}
	if err := s.startMTLS(); err != nil {
		s.closeListeners()
		return err
	}
	if err := s.startXDSServer(); err != nil {
		s.closeListeners()
		return err
	}
	if err := s.startRegistration(); err != nil {
		s.stopXDSServer()
		s.closeListeners()
		return err
	}
	// Serve.
	s.admin = &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.With("component", "admin").Handler(), slog.LevelWarn)}
	s.goServe(func() error { return s.admin.Serve(s.adminLn) })
	if s.probeLn != nil {
		s.probe = &http.Server{Handler: s.probeHandler(), ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: slog.NewLogLogger(s.log.With("component", "probe").Handler(), slog.LevelWarn)}
		s.goServe(func() error { return s.probe.Serve(s.probeLn) })
	}
	s.watchClusterSettings()
	for _, c := range s.clusters {
		c.start(s.src)
	}
	s.watchOrigin()
	for _, nl := range s.outbound {
		c := s.byName[nl.name]
		s.serveCluster(c, nl.ln)
	}
	if s.inbound != nil {
		s.inbound.start(nil)
		s.inboundSrv = s.serveCluster(s.inbound, s.inboundLn)
	}
	if s.transLn != nil {
		s.trans = newTransparent(s, s.transLn)
		s.goServe(s.trans.serve)
	}
	s.bound.Store(true)
	s.log.Info("sidecar started", "admin", s.adminLn.Addr().String(), "upstreams", len(s.clusters))
	return nil
}

// Ready reports what /ready reports.
func (s *Sidecar) Ready() (bool, string) {
	if s.draining.Load() || s.drained.Load() {
		return false, "draining"
	}
	if !s.bound.Load() {
		return false, "listeners not bound"
	}
	if s.mesh != nil {
		if ok, why := s.mesh.ready(); !ok {
			return false, why
		}
	}
	if in := s.inbound; in != nil && in.hc != nil && !in.hc.Healthy(appAddr(s.config().Service)) {
		return false, "local app failing its health check"
	}
	for _, c := range s.clusterList() {
		select {
		case <-c.Ready():
		default:
			return false, "upstream " + c.Name + " has no endpoints snapshot yet"
		}
	}
	return true, "ready"
}

// WaitReady blocks until ready or ctx ends.
func (s *Sidecar) WaitReady(ctx context.Context) error {
	if s.mesh != nil {
		select {
		case <-s.mesh.store.Ready():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, c := range s.clusterList() {
		select {
		case <-c.Ready():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Quit is closed when /quitquitquit asks the sidecar to stop.
func (s *Sidecar) Quit() <-chan struct{} { return s.quit }

// AdminAddr, UpstreamAddr and InboundAddr give the bound addresses.
func (s *Sidecar) AdminAddr() string { return s.adminLn.Addr().String() }

// ProbeAddr is the bound probe listener, or "".
func (s *Sidecar) ProbeAddr() string {
	if s.probeLn == nil {
		return ""
	}
	return s.probeLn.Addr().String()
}

func (s *Sidecar) UpstreamAddr(service string) string {
	s.clMu.RLock()
	defer s.clMu.RUnlock()
	for _, nl := range s.outbound {
		if nl.name == service {
			return nl.ln.Addr().String()
		}
	}
	return ""
}

// XDSAddr is the bound embedded xDS server, or "".
func (s *Sidecar) XDSAddr() string {
	if s.xdsLn == nil {
		return ""
	}
	return s.xdsLn.Addr().String()
}

// TransparentAddr is the bound transparent listener, or "".
func (s *Sidecar) TransparentAddr() string {
	if s.transLn == nil {
		return ""
	}
	return s.transLn.Addr().String()
}

func (s *Sidecar) InboundAddr() string {
	if s.inboundLn == nil {
		return ""
	}
	return s.inboundLn.Addr().String()
}

// Cluster returns the named upstream cluster.
func (s *Sidecar) Cluster(name string) *Cluster {
	s.clMu.RLock()
	defer s.clMu.RUnlock()
	return s.byName[name]
}

// clusterList is the upstream clusters in force (a reload replaces the
// slice, never changes it).
func (s *Sidecar) clusterList() []*Cluster {
	s.clMu.RLock()
	defer s.clMu.RUnlock()
	return s.clusters
}

// Clusters returns the /clusters view.
func (s *Sidecar) Clusters() []ClusterStatus {
	s.clMu.RLock()
	cl, fo := s.clusters, s.failover
	s.clMu.RUnlock()
	out := make([]ClusterStatus, 0, len(cl)+1)
	for _, c := range cl {
		cs := c.Status()
		if fo != nil {
			cs.Datacenters = fo.Status(c.Name)
		}
		out = append(out, cs)
	}
	if s.inbound != nil {
		out = append(out, s.inbound.Status())
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Shutdown drains: /ready turns 503 at once and the Consul registration
// goes; the inbound listener keeps serving for drain.inbound_grace with
// Connection: close (GOAWAY on HTTP/2), then closes; the outbound listeners
// keep serving the app until they have been idle for drain.quiet_period
// after the inbound closed, or drain.timeout after the start; then
// everything stops.
func (s *Sidecar) Shutdown(ctx context.Context) error {
	var err error
	s.stopOnce.Do(func() {
		s.reloadMu.Lock() // no reload from now on
		s.stopping = true
		s.reloadMu.Unlock()
		drain := s.config().Drain
		start := time.Now()
		deadline := start.Add(drain.Timeout)
		s.draining.Store(true)
		s.log.Info("draining", "timeout", drain.Timeout, "inbound_grace", *drain.InboundGrace,
			"quiet_period", *drain.QuietPeriod)
		s.stopRegistration() // first: other sidecars stop sending here while we drain
		inboundClosed, inboundDone := s.drainInbound(ctx, deadline)
		s.waitOutboundQuiet(ctx, inboundClosed, deadline)
		s.log.Info("outbound quiet; stopping", "drained_for", time.Since(start).Round(time.Millisecond))
		dctx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		s.clMu.RLock()
		servers, outbound := s.servers, s.outbound
		s.clMu.RUnlock()
		var wg sync.WaitGroup
		for _, srv := range servers {
			if srv == s.inboundSrv {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if e := srv.Shutdown(dctx); e != nil {
					_ = srv.Close()
				}
			}()
		}
		if s.trans != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = s.trans.srv.Shutdown(dctx) // its HTTP requests drain like the outbound listeners'
			}()
		}
		wg.Wait()
		<-inboundDone
		for _, nl := range outbound {
			nl.ln.Close()
		}
		// TCP relays first: the transparent listener waits for the relays it
		// started, which only end when their proxy closes them.
		s.hmu.Lock() // the transparent listener may still make proxies
		s.tcpClosed = true
		tcps := append([]*tcpProxy(nil), s.tcp...)
		s.hmu.Unlock()
		for _, p := range tcps {
			p.closeAll()
		}
		if s.trans != nil {
			s.trans.close()
		}
		for _, stop := range s.closers { // CDS watches
			stop()
		}
		for _, c := range s.clusterList() {
			c.close()
		}
		if s.inbound != nil {
			s.inbound.close()
		}
		s.stopXDSServer()
		s.shutdownTracing()
		if l := s.alog.Swap(nil); l != nil {
			l.close()
		}
		if s.ownSrc && s.src != nil {
			_ = s.src.Close()
		}
		if s.admin != nil {
			_ = s.admin.Shutdown(ctx)
		}
		if s.probe != nil {
			_ = s.probe.Shutdown(ctx)
		}
		s.wg.Wait()
	})
	return err
}
