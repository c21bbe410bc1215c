package sidecar

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"gopkg.in/yaml.v3"
)

// adminHandler serves the contract's admin endpoints.
func (s *Sidecar) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", s.serveReady)
	mux.HandleFunc("GET /certs", s.serveCerts)
	mux.HandleFunc("GET /clusters", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"clusters": s.Clusters()})
	})
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, r *http.Request) {
		dump, err := s.ConfigDump()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, dump)
	})
	mux.Handle("GET /metrics", s.metricsHandler())
	mux.HandleFunc("POST /quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("OK\n"))
		s.requestQuit()
	})
	mux.HandleFunc("POST /drain_listeners", func(w http.ResponseWriter, r *http.Request) {
		s.draining.Store(true)
		_, _ = w.Write([]byte("OK\n"))
	})
	return mux
}

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

func (s *Sidecar) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.m.Registry, promhttp.HandlerOpts{})
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
	y, err := yaml.Marshal(s.cfg)
	if err != nil {
		return nil, err
	}
	var v map[string]any
	if err := yaml.Unmarshal(y, &v); err != nil {
		return nil, err
	}
	out := map[string]any{"config": v, "version": Version}
	s.componentDump(out)
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
		for _, c := range s.clusters {
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
	if s.consul != nil {
		out["consul"] = s.consul.Stats()
	}
	if s.reg != nil {
		out["consul_registration"] = s.reg.Stats()
	}
}
