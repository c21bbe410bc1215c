package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/discovery/consul"
	"github.com/sidemesh/sidemesh/upstream"
)

// Reloading (SIGHUP, a change of the config file, POST /reload) applies a
// new config without a restart:
//
//   - upstreams added, removed or changed; their listeners bound, closed or
//     rebound (the new address is bound before anything changes);
//   - an upstream that stays keeps its Cluster (endpoints, health, outlier
//     ejections, slow start): its new settings apply the way CDS settings do,
//     each of breaker, outlier detector and health checker rebuilt only when
//     its own settings changed; requests in flight finish on the settings
//     they started with;
//   - discovery (file or Consul) changed: the upstreams watch the new source,
//     endpoints that stay keep their state;
//   - log_level, drain and access_log take effect;
//   - node, admin, probe, service, transparent, tracing, xds_server,
//     discovery.xds, mtls, metrics and zone take effect only at a restart: a reload that
//     changes them is refused.
//
// A new config that fails to load is rejected whole: the running one stays.

// config is the config in force.
func (s *Sidecar) config() *Config {
	s.clMu.RLock()
	defer s.clMu.RUnlock()
	return s.cfg
}

// consulSource is the Consul discovery source in force, or nil.
func (s *Sidecar) consulSource() *consul.Source {
	s.clMu.RLock()
	defer s.clMu.RUnlock()
	return s.consul
}

// ErrReloadRefused: the sidecar is draining, or was built without a file.
var ErrReloadRefused = errors.New("reload refused")

func newReloadsCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidemesh_config_reloads_total",
		Help: "Config reloads by result: applied, or rejected (the running config stays)."}, []string{"result"})
}

// ReloadFile reloads from the config file the sidecar was started with.
func (s *Sidecar) ReloadFile() error {
	if s.cfgFile == "" {
		return fmt.Errorf("%w: no config file (Options.ConfigFile)", ErrReloadRefused)
	}
	next, err := Load(s.cfgFile)
	if err != nil {
		s.rejected(err)
		return err
	}
	return s.Reload(next)
}

func (s *Sidecar) rejected(err error) {
	s.reloads.WithLabelValues("rejected").Inc()
	s.log.Error("config reload rejected; the running config stays", "err", err)
}

// Reload applies a loaded (validated) config.
func (s *Sidecar) Reload(next *Config) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.stopping {
		return fmt.Errorf("%w: draining", ErrReloadRefused)
	}
	if err := s.apply(next); err != nil {
		s.rejected(err)
		return err
	}
	s.reloads.WithLabelValues("applied").Inc()
	s.log.Info("config reloaded", "file", next.source, "upstreams", len(next.Upstreams))
	return nil
}

// restartOnly lists the keys a reload cannot change, with their values.
func restartOnly(c *Config) []struct {
	key string
	v   any
} {
	return []struct {
		key string
		v   any
	}{{"node", c.Node}, {"admin", [2]any{c.Admin.Address, c.Admin.Pprof}}, {"probe", c.Probe}, {"service", c.Service},
		{"transparent", c.Transparent}, {"tracing", c.Tracing}, {"xds_server", c.XDSServer},
		{"discovery.xds", c.Discovery.XDS}, {"mtls", c.MTLS}, {"metrics", c.Metrics}, {"zone", c.Zone}}
}

// retired is a listener (and maybe its cluster) a reload took out of
// service; it finishes what it has in the background.
type retired struct {
	ln  net.Listener
	srv *h1Server
	c   *Cluster // closed afterwards: the upstream was removed
}

func (s *Sidecar) apply(next *Config) error {
	cur := s.config()
	name := next.source
	for i, k := range restartOnly(next) {
		if !reflect.DeepEqual(k.v, restartOnly(cur)[i].v) {
			return fmt.Errorf("%s: %w: %s: changed; it takes effect only at a restart", name, ErrConfig, k.key)
		}
	}
	if cur.XDSServer != nil && (!reflect.DeepEqual(cur.Upstreams, next.Upstreams) || !reflect.DeepEqual(cur.Discovery, next.Discovery)) {
		return fmt.Errorf("%s: %w: upstreams: the embedded xds_server serves them; changes take effect only at a restart", name, ErrConfig)
	}
	// Everything that can fail comes first: the new source, new binds.
	src := s.src
	var newSrc discovery.Source
	var newConsul *consul.Source
	if s.ownSrc && (!reflect.DeepEqual(cur.Discovery, next.Discovery) || !reflect.DeepEqual(failovers(cur), failovers(next))) {
		var err error
		newSrc, newConsul, err = newSource(next, s.log)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		src = newSrc
	}
	s.clMu.RLock()
	oldByName, oldOutbound := s.byName, s.outbound
	s.clMu.RUnlock()
	oldLn := map[string]namedListener{}
	for _, nl := range oldOutbound {
		oldLn[nl.name] = nl
	}
	keep := func(u *Upstream) *Cluster {
		if c := oldByName[u.Service]; c != nil && c.upstream().Protocol == u.Protocol {
			return c
		}
		return nil
	}
	binds := map[string]net.Listener{}
	fail := func(err error) error {
		for _, ln := range binds {
			ln.Close()
		}
		if newSrc != nil {
			_ = newSrc.Close()
		}
		return err
	}
	for i := range next.Upstreams {
		u := &next.Upstreams[i]
		if u.Listen == "" {
			continue
		}
		if c := keep(u); c != nil && c.upstream().Listen == u.Listen {
			if _, ok := oldLn[u.Service]; ok {
				continue // the same listener serves on
			}
		}
		ln, err := net.Listen("tcp", u.Listen)
		if err != nil {
			return fail(fmt.Errorf("%s: %w: upstreams[%d].listen: %w", name, ErrConfig, i, err))
		}
		binds[u.Service] = ln
	}
	var newLog *accessLog
	logChanged := !reflect.DeepEqual(cur.AccessLog, next.AccessLog)
	if logChanged && next.AccessLog != nil {
		var err error
		if newLog, err = newAccessLog(*next.AccessLog, s.alogDropped, s.stdout); err != nil {
			return fail(fmt.Errorf("%s: %w", name, err))
		}
	}
	// Commit: nothing fails from here on.
	var (
		clusters []*Cluster
		byName   = map[string]*Cluster{}
		outbound []namedListener
		started  []*Cluster
		gone     []retired
		serve    []namedListener
	)
	for i := range next.Upstreams {
		u := &next.Upstreams[i]
		c := keep(u)
		if c != nil {
			changed := !reflect.DeepEqual(c.upstream().Settings, u.Settings)
			c.reconfigure(u)
			if changed {
				s.swapHandlers(c, u)
			}
			if newSrc != nil {
				c.rewatch(newSrc)
			}
		} else {
			c = newCluster(u, s.m, s.tp, s.log)
			started = append(started, c)
		}
		clusters = append(clusters, c)
		byName[u.Service] = c
		if ln, ok := binds[u.Service]; ok {
			nl := namedListener{u.Service, ln}
			outbound = append(outbound, nl)
			serve = append(serve, nl)
		} else if nl, ok := oldLn[u.Service]; ok && u.Listen != "" {
			outbound = append(outbound, nl)
		}
	}
	// Listeners and clusters that leave.
	for _, nl := range oldOutbound {
		kept := false
		for _, o := range outbound {
			kept = kept || o.ln == nl.ln
		}
		if !kept {
			gone = append(gone, retired{ln: nl.ln, srv: s.serverOf(nl.ln)})
		}
	}
	for svc, c := range oldByName {
		if byName[svc] != c {
			gone = append(gone, retired{c: c})
		}
	}
	for _, c := range started {
		c.start(src)
		if s.xdsCli != nil {
			cancel := s.xdsCli.WatchCluster(c.Name, func(remote upstream.Settings) { c.applySettings(remote) })
			s.closers = append(s.closers, cancel)
		}
	}
	s.clMu.Lock()
	s.cfg, s.clusters, s.byName, s.outbound = next, clusters, byName, outbound
	var oldSrc discovery.Source
	if newSrc != nil {
		oldSrc, s.src, s.consul = s.src, newSrc, newConsul
		s.failover, _ = newSrc.(*failoverSource)
	}
	s.clMu.Unlock()
	if logChanged {
		old := s.alog.Swap(newLog)
		for _, c := range append(clusters, s.inbound) {
			if c != nil && !slices.Contains(started, c) {
				s.swapHandlers(c, c.upstream())
			}
		}
		if old != nil {
			time.AfterFunc(next.Drain.Timeout, old.close) // lines of requests still in flight
		}
	}
	for _, nl := range serve {
		s.serveCluster(byName[nl.name], nl.ln)
	}
	if l, ok := parseLevel(next.LogLevel); ok && next.LogLevel != cur.LogLevel {
		s.level.Set(l)
	} else if next.LogLevel == "" && cur.LogLevel != "" {
		s.level.Set(0) // info
	}
	if oldSrc != nil {
		_ = oldSrc.Close()
	}
	s.retire(gone, next.Drain.Timeout)
	return nil
}

// failovers lists each upstream's failover datacenters: the Consul source
// is built around them, so a change rebuilds it.
func failovers(c *Config) map[string]*upstream.Failover {
	out := map[string]*upstream.Failover{}
	for i := range c.Upstreams {
		out[c.Upstreams[i].Service] = c.Upstreams[i].Failover
	}
	return out
}

// serverOf is the HTTP server serving ln (nil for a TCP listener).
func (s *Sidecar) serverOf(ln net.Listener) *h1Server {
	s.clMu.RLock()
	defer s.clMu.RUnlock()
	return s.lnServer[ln]
}

// retire lets retired listeners finish their requests (up to timeout)
// and then closes them and the clusters that left.
func (s *Sidecar) retire(gone []retired, timeout time.Duration) {
	for _, r := range gone {
		if r.ln != nil && r.srv == nil {
			r.ln.Close() // TCP: the proxy's relays go on until they end
		}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		for _, r := range gone {
			if r.srv != nil {
				if err := r.srv.Shutdown(ctx); err != nil {
					_ = r.srv.Close()
				}
				s.clMu.Lock()
				s.servers = deleteServer(s.servers, r.srv)
				delete(s.lnServer, r.ln)
				s.clMu.Unlock()
			}
		}
		for _, r := range gone {
			if r.c == nil {
				continue
			}
			s.hmu.Lock()
			p := s.tcpByCluster[r.c]
			delete(s.tcpByCluster, r.c)
			delete(s.httpByCluster, r.c)
			s.hmu.Unlock()
			if p != nil {
				p.closeAll()
			}
			r.c.close()
		}
	}()
}

func deleteServer(list []*h1Server, srv *h1Server) []*h1Server {
	out := list[:0:0]
	for _, x := range list {
		if x != srv {
			out = append(out, x)
		}
	}
	return out
}

// swapHandlers puts a kept upstream's changed settings into its proxies:
// a new HTTP handler (route timeout, retries, hash policy, pools) that new
// requests take, and new TCP settings for new connections.
func (s *Sidecar) swapHandlers(c *Cluster, u *Upstream) {
	s.hmu.Lock()
	slot, _ := s.httpByCluster[c].(*handlerSlot)
	p := s.tcpByCluster[c]
	s.hmu.Unlock()
	if p != nil {
		p.set.Store(newTCPSettings(u))
	}
	if slot == nil {
		return
	}
	old := slot.h.Swap(s.newClusterHandler(c))
	old.up.t.h1.CloseIdleConnections() // busy connections close when their request ends
	old.up.t.h2.CloseIdleConnections()
}

// reconfigure puts a reloaded upstream config in force, applying its
// settings the way applySettings applies CDS ones (the last CDS settings,
// if any, still fill the keys the file leaves out).
func (c *Cluster) reconfigure(u *Upstream) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.cur.Store(u)
	eff := u.Settings
	if c.lastCDS != nil {
		eff = upstream.Merge(u.Settings, *c.lastCDS, u.IsSet)
	}
	c.applyLocked(eff, "cluster settings reloaded")
}

// rewatch moves the cluster to another discovery source; hosts that stay
// keep their state.
func (c *Cluster) rewatch(src discovery.Source) {
	c.mu.Lock()
	old := c.cancelWatch
	c.mu.Unlock()
	cancel := src.Watch(c.Name, discovery.WatcherFuncs{
		Update:        c.onUpdate,
		ResourceError: c.onResourceError,
		AmbientError:  c.onAmbientError,
	})
	c.mu.Lock()
	c.cancelWatch = cancel
	c.mu.Unlock()
	if old != nil {
		old()
	}
}

// WatchConfigFile reloads whenever the config file changes. It watches
// the file's directory, so that an editor's rename-over-write and a
// Kubernetes ConfigMap's symlink swap (..data) are seen; events within
// debounce of each other make one reload. It stops when ctx ends.
func (s *Sidecar) WatchConfigFile(ctx context.Context, debounce time.Duration) error {
	if s.cfgFile == "" {
		return fmt.Errorf("%w: no config file (Options.ConfigFile)", ErrReloadRefused)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	dir := filepath.Dir(s.cfgFile)
	if err := w.Add(dir); err != nil {
		w.Close()
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	base := filepath.Base(s.cfgFile)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer w.Close()
		var timer *time.Timer
		var fire <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				// The file itself, or a ConfigMap's ..data swap.
				if b := filepath.Base(ev.Name); b != base && !strings.HasPrefix(b, "..") {
					continue
				}
				if ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename|fsnotify.Remove) == 0 {
					continue
				}
				if timer == nil {
					timer = time.NewTimer(debounce)
				} else {
					timer.Reset(debounce)
				}
				fire = timer.C
			case <-fire:
				fire = nil
				_ = s.ReloadFile() // a rejection is logged and counted
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				s.log.Warn("config file watch", "err", err)
			}
		}
	}()
	return nil
}

// DrainTimeout is drain.timeout of the config in force.
func (s *Sidecar) DrainTimeout() time.Duration { return s.config().Drain.Timeout }
