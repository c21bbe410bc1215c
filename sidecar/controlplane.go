package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/upstream"
	"github.com/sidemesh/sidemesh/xds"
)

// This file is the control-plane wiring: the embedded xDS server (in the
// sidecar and as `sidemesh xds`), the xDS client as discovery source, and
// CDS settings flowing into the clusters.

// xdsUpstreams lists the upstreams the xDS server serves: each one's name
// and its settings (defaults filled: effective values are served).
// With a defaults block, each upstream's keys left out of the file take
// the defaults' values.
func xdsUpstreams(cfg *Config) []xds.Upstream {
	out := make([]xds.Upstream, 0, len(cfg.Upstreams))
	for i := range cfg.Upstreams {
		u := &cfg.Upstreams[i]
		settings := u.Settings
		if cfg.Defaults != nil {
			settings = upstream.Merge(u.Settings, *cfg.Defaults, u.IsSet)
		}
		out = append(out, xds.Upstream{Service: u.Service, Settings: settings})
	}
	return out
}

// xdsDebounce is xds_server.debounce (defaults filled by SetDefaults).
func xdsDebounce(cfg *Config) time.Duration {
	if cfg.XDSServer == nil || cfg.XDSServer.Debounce == nil {
		return DefaultXDSDebounce
	}
	return *cfg.XDSServer.Debounce
}

// startXDSServer binds xds_server.listen (when configured) and serves the
// sidecar's discovery source and upstream settings over xDS.
func (s *Sidecar) startXDSServer() error {
	x := s.cfg.XDSServer
	if x == nil {
		return nil
	}
	ln, err := listenXDS(x)
	if err != nil {
		return err
	}
	srv, err := xds.NewServer(xds.ServerOptions{Logger: s.log, Source: s.src, Upstreams: xdsUpstreams(s.cfg), Debounce: xdsDebounce(s.cfg)})
	if err != nil {
		ln.Close()
		return err
	}
	s.xdsSrv, s.xdsLn = srv, ln
	s.goServe(func() error { return srv.Serve(ln) })
	return nil
}

// stopXDSServer stops the embedded xDS server, if any (last on shutdown).
func (s *Sidecar) stopXDSServer() {
	if s.xdsSrv != nil {
		s.xdsSrv.Stop()
	}
}

// newXDSSource is discovery.xds: our ADS client, whose CDS settings apply
// to upstreams for every key the config file leaves out.
func (s *Sidecar) newXDSSource() (discovery.Source, error) {
	cc := *s.cfg.Discovery.XDS
	cc.NodeID = s.cfg.Node
	if s.cfg.Service != nil {
		cc.Cluster = s.cfg.Service.Name
	}
	cli, err := xds.NewClient(cc, xds.ClientOptions{Logger: s.log})
	if err != nil {
		return nil, err
	}
	s.xdsCli = cli
	return cli, nil
}

// watchClusterSettings subscribes each cluster to its CDS settings.
func (s *Sidecar) watchClusterSettings() {
	if s.xdsCli == nil {
		return
	}
	for _, c := range s.clusters {
		cancel := s.xdsCli.WatchCluster(c.Name, func(remote upstream.Settings) { c.applySettings(remote) })
		s.closers = append(s.closers, cancel)
	}
}

// ControlPlane is `sidemesh xds`: the configured discovery source feeding
// the embedded xDS server, with nothing else. It serves every service the
// source knows (Consul's catalog, every service of the endpoints file):
// upstreams[] set per-service settings, defaults those of all others.
type ControlPlane struct {
	cfg  *Config
	log  *slog.Logger
	src  discovery.Source
	srv  *xds.Server
	ln   net.Listener
	done chan struct{}

	admin   *http.Server
	adminLn net.Listener
}

// NewControlPlane builds the xDS server from a config (discovery + upstreams).
func NewControlPlane(cfg *Config, log *slog.Logger) (*ControlPlane, error) {
	if cfg.Discovery.XDS != nil {
		return nil, fmt.Errorf("%w: discovery.xds: the xDS server needs a source of truth (file or consul), not another xDS server", ErrConfig)
	}
	src, _, err := newSource(cfg, log)
	if err != nil {
		return nil, err
	}
	if src == nil {
		return nil, fmt.Errorf("%w: discovery: set file or consul as the xDS server's source of truth", ErrConfig)
	}
	srv, err := xds.NewServer(xds.ServerOptions{Logger: log, Source: src, Upstreams: xdsUpstreams(cfg),
		Debounce: xdsDebounce(cfg), ServeCatalog: true, Defaults: cfg.Defaults})
	if err != nil {
		src.Close()
		return nil, err
	}
	return &ControlPlane{cfg: cfg, log: log, src: src, srv: srv}, nil
}

// Start binds xds_server.listen and serves.
func (cp *ControlPlane) Start() error {
	ln, err := listenXDS(cp.cfg.XDSServer)
	if err != nil {
		return err
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
	if cp.admin != nil {
		_ = cp.admin.Shutdown(ctx)
	}
	cp.srv.Stop()
	if cp.done != nil {
		select {
		case <-cp.done:
		case <-ctx.Done():
		}
	}
	_ = cp.src.Close()
}
