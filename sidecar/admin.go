package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"gopkg.in/yaml.v3"
)

// adminEndpoint is one row of the admin index page.
type adminEndpoint struct{ pattern, what string }

// adminHandler serves the contract's admin endpoints. Reading is open to
// any peer that reaches the admin address; the mutating endpoints are
// POST-only and answer 403 unless the peer is loopback, wherever admin is
// bound.
func (s *Sidecar) adminHandler() http.Handler {
	mux := http.NewServeMux()
	var index []adminEndpoint
	handle := func(pattern, what string, h http.Handler) {
		if strings.HasPrefix(pattern, "POST ") {
			h = loopbackOnly(h)
		}
		mux.Handle(pattern, h)
		index = append(index, adminEndpoint{pattern, what})
	}
	handle("GET /ready", "200 when ready, 503 before and while draining", http.HandlerFunc(s.serveReady))
	handle("GET /certs", "mTLS identity, validity and trust bundle (JSON; never key material)", http.HandlerFunc(s.serveCerts))
	handle("GET /clusters", "upstreams and their endpoints (JSON)", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"clusters": s.Clusters()})
	}))
	handle("GET /config_dump", "the effective config, secrets redacted (JSON)", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dump, err := s.ConfigDump()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, dump)
	}))
	handle("GET /metrics", "Prometheus metrics", s.metricsHandler())
	handle("GET /logging", "the log level", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "level: %s\n", levelName(s.level.Level()))
	}))
	handle("POST /logging", "?level=debug|info|warn|error sets the log level", http.HandlerFunc(s.serveSetLevel))
	handle("POST /quitquitquit", "drain and exit", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("OK\n"))
		s.requestQuit()
	}))
	handle("POST /drain_listeners", "/ready turns 503 (out of rotation)", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.drained.Store(true)
		_, _ = w.Write([]byte("OK\n"))
	}))
	handle("POST /undrain", "undoes /drain_listeners", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.drained.Store(false)
		_, _ = w.Write([]byte("OK\n"))
	}))
	handle("POST /reload", "reload the config file", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.ReloadFile(); err != nil {
			code := http.StatusBadRequest
			if errors.Is(err, ErrReloadRefused) {
				code = http.StatusConflict
			}
			http.Error(w, err.Error(), code)
			return
		}
		_, _ = w.Write([]byte("OK\n"))
	}))
	if s.cfg.Admin.Pprof {
		handle("GET /debug/pprof/", "Go profiles (admin.pprof)", http.HandlerFunc(pprof.Index))
		handlePprof(mux)
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		var b strings.Builder
		b.WriteString("<!doctype html>\n<html><head><title>sidemesh admin</title></head><body>\n<h1>sidemesh admin</h1>\n")
		fmt.Fprintf(&b, "<p>version %s</p>\n<table>\n", html.EscapeString(Version))
		for _, e := range index {
			method, path, _ := strings.Cut(e.pattern, " ")
			link := html.EscapeString(path)
			if method == "GET" {
				link = `<a href="` + link + `">` + link + `</a>`
			}
			fmt.Fprintf(&b, "<tr><td>%s</td><td>%s</td><td>%s</td></tr>\n", method, link, html.EscapeString(e.what))
		}
		b.WriteString("</table>\n<p>POST endpoints answer only loopback peers.</p>\n</body></html>\n")
		_, _ = w.Write([]byte(b.String()))
	})
	return mux
}

// loopbackOnly refuses (403) a peer that is not loopback: the mutating
// endpoints stay local even when admin is bound to a pod address.
func loopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackPeer(r.RemoteAddr) {
			http.Error(w, fmt.Sprintf("%s %s is allowed only from loopback (peer %s)", r.Method, r.URL.Path, r.RemoteAddr), http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func loopbackPeer(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// serveSetLevel is POST /logging?level=L.
func (s *Sidecar) serveSetLevel(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("level")
	l, ok := parseLevel(name)
	if !ok {
		http.Error(w, fmt.Sprintf("level %q: must be one of debug, info, warn, error", name), http.StatusBadRequest)
		return
	}
	old := s.level.Level()
	s.level.Set(l)
	s.log.Info("log level changed", "from", levelName(old), "to", levelName(l))
	fmt.Fprintf(w, "level: %s\n", levelName(l))
}

func parseLevel(name string) (slog.Level, bool) {
	switch strings.ToLower(name) {
	case "debug":
		return slog.LevelDebug, true
	case "info", "":
		return slog.LevelInfo, name != ""
	case "warn", "warning":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return 0, false
}

func levelName(l slog.Level) string { return strings.ToLower(l.String()) }

// probeHandler serves the probe listener: read-only GET /ready and GET
// /metrics, safe to expose to the Consul agent, the kubelet and Prometheus
// on the pod's address while admin stays on loopback.
func (s *Sidecar) probeHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", s.serveReady)
	mux.Handle("GET /metrics", s.metricsHandler())
	return mux
}

func (s *Sidecar) serveReady(w http.ResponseWriter, _ *http.Request) {
	ok, why := s.Ready()
	w.Header().Set("Content-Type", "text/plain")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = w.Write([]byte(why + "\n"))
}

// runtimeRegistry holds the Go runtime and process collectors (go_*,
// process_*), shared by every sidecar of the process.
var runtimeRegistry = func() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}()

func (s *Sidecar) metricsHandler() http.Handler {
	return promhttp.HandlerFor(prometheus.Gatherers{s.m.Registry, runtimeRegistry}, promhttp.HandlerOpts{})
}

func (s *Sidecar) requestQuit() {
	select {
	case <-s.quit:
	default:
		close(s.quit)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// ConfigDump is the effective config (defaults filled) as JSON-friendly
// values, with durations as strings ("5s"), plus dynamic state from extras.
func (s *Sidecar) ConfigDump() (map[string]any, error) {
	y, err := yaml.Marshal(s.config())
	if err != nil {
		return nil, err
	}
	var v map[string]any
	if err := yaml.Unmarshal(y, &v); err != nil {
		return nil, err
	}
	out := map[string]any{"config": v, "version": Version}
	s.componentDump(out)
	redact(out)
	return out, nil
}

// componentDump adds the state of the optional components (xDS client and
// server, Consul discovery and registration) to /config_dump.
func (s *Sidecar) componentDump(out map[string]any) {
	if s.xdsCli != nil {
		out["xds_client"] = s.xdsCli.Stats()
		// What each upstream runs with after merging the control plane's
		// cluster settings under the file's own keys.
		eff := map[string]any{}
		for _, c := range s.clusterList() {
			c.mu.Lock()
			e := map[string]any{"lb_policy": c.lbPolicy, "healthy_panic_threshold": c.panicPct,
				"connect_timeout": c.connectTimeout().String(), "circuit_breakers": c.breaker().Stats()}
			if c.lastCDS != nil {
				e["from_xds"] = c.lastCDS
			}
			c.mu.Unlock()
			eff[c.Name] = e
		}
		out["effective_clusters"] = eff
	}
	if s.xdsSrv != nil {
		out["xds_server"] = s.xdsSrv.Stats()
	}
	if cs := s.consulSource(); cs != nil {
		out["consul"] = cs.Stats()
	}
	if s.reg != nil {
		out["consul_registration"] = s.reg.Stats()
	}
}

// Redacted replaces a secret in admin output.
const Redacted = "[redacted]"

// secretKey reports whether a config or state key holds a secret: any
// token (the Consul ACL token, token_file) or password.
func secretKey(k string) bool {
	k = strings.ToLower(k)
	return strings.Contains(k, "token") || strings.Contains(k, "password") || strings.Contains(k, "secret")
}

// redact replaces, in place, the non-empty values of secret keys anywhere
// in v (maps and slices as yaml/json decoding makes them).
func redact(v any) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			if secretKey(k) && e != nil && e != "" {
				t[k] = Redacted
				continue
			}
			redact(e)
		}
	case []any:
		for _, e := range t {
			redact(e)
		}
	}
}

// levelGate filters a handler by a runtime level (POST /logging) when the
// caller did not build the handler on a slog.LevelVar of its own.
type levelGate struct {
	h  slog.Handler
	lv *slog.LevelVar
}

func (g levelGate) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= g.lv.Level() && g.h.Enabled(ctx, l)
}
func (g levelGate) Handle(ctx context.Context, r slog.Record) error { return g.h.Handle(ctx, r) }
func (g levelGate) WithAttrs(a []slog.Attr) slog.Handler            { return levelGate{g.h.WithAttrs(a), g.lv} }
func (g levelGate) WithGroup(n string) slog.Handler                 { return levelGate{g.h.WithGroup(n), g.lv} }

// handlePprof mounts the profiles other than the index (pprof.Index serves
// /debug/pprof/ and the named profiles under it: heap, goroutine, ...).
func handlePprof(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}
