package sidecar

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/sidemesh/sidemesh/xds"
)

// DefaultControlPlaneAdmin is the admin address of `sidemesh xds` when the
// config leaves admin at the sidecar's default (istiod's monitoring port).
const DefaultControlPlaneAdmin = "127.0.0.1:15014"

// controlPlaneAdmin serves the control plane's admin endpoints:
//
//	GET /ready        200 once the first snapshot is set, 503 before
//	GET /metrics      sidemesh_xds_server_* (clients, pushes, push latency, ACK/NACK by type)
//	GET /config_dump  server stats: versions per type, services served (never secrets)
//	GET /clients      connected streams: node id, versions ACKed per type, last NACK with detail
//	GET /debug/pprof/ Go profiles, only with admin.pprof (as the sidecar's admin)
func controlPlaneAdmin(srv *xds.Server, pprofOn bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if srv.Version() == "" {
			http.Error(w, "no snapshot yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_ = xds.WriteServerMetrics(w, srv.Stats())
	})
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"xds_server": srv.Stats()})
	})
	mux.HandleFunc("GET /clients", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, srv.Clients())
	})
	if pprofOn {
		mux.Handle("GET /debug/pprof/", http.HandlerFunc(pprof.Index))
		handlePprof(mux)
	}
	return mux
}

// StartAdmin binds addr and serves the control plane's admin endpoints
// until Stop.
func (cp *ControlPlane) StartAdmin(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin %s: %w", addr, err)
	}
	hs := &http.Server{Handler: controlPlaneAdmin(cp.srv, cp.cfg.Admin.Pprof), ReadHeaderTimeout: 10 * time.Second}
	cp.adminLn, cp.admin = ln, hs
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cp.log.Error("control-plane admin stopped", "err", err)
		}
	}()
	cp.log.Info("control-plane admin started", "listen", ln.Addr().String())
	return nil
}

// AdminAddr is the bound admin address ("" before StartAdmin).
func (cp *ControlPlane) AdminAddr() string {
	if cp.adminLn == nil {
		return ""
	}
	return cp.adminLn.Addr().String()
}

// Server is the embedded xDS server (stats, clients).
func (cp *ControlPlane) Server() *xds.Server { return cp.srv }
