package sidecar

import (
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/tracing"
	"github.com/sidemesh/sidemesh/upstream"
)

// newInboundCluster is a one-endpoint cluster for the local app. With
// service.health_check the sidecar checks the app itself (the app listens
// on loopback, where no Consul agent or kubelet on another host reaches it)
// and /ready reflects the verdict; requests still reach the app while it
// fails (panic threshold 100: a one-host cluster always routes).
func newInboundCluster(sv *Service, m *Metrics, tp *tracing.Provider, log *slog.Logger) *Cluster {
	u := &Upstream{Service: "inbound|" + sv.Name, Listen: sv.Inbound, Protocol: sv.Protocol, Settings: upstream.Settings{Timeout: &sv.Timeout}}
	if sv.HealthCheck != nil {
		hc := *sv.HealthCheck
		u.HealthCheck = &hc
	}
	u.SetDefaults()
	pct := 0.0
	if u.HealthCheck != nil {
		pct = 100
	}
	u.HealthyPanicThreshold = &pct
	u.noOutlier = true
	c := newCluster(u, m, tp, log)
	c.hadTraffic.Store(true) // check the local app at interval, never at no_traffic_interval
	snap, _ := discovery.NewSnapshot(u.Service, 1, []discovery.Endpoint{{Address: appAddr(sv), Weight: 1}})
	c.onUpdate(snap)
	return c
}

// appAddr is where the local app listens.
func appAddr(sv *Service) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(sv.Port)) }

// inboundHandler wraps the inbound cluster's proxy with the server span
// (the parent of the app's spans) and the inbound metrics.
func (s *Sidecar) inboundHandler(h http.Handler) http.Handler {
	m := s.m
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		if s.inboundClosing.Load() {
			// Draining: this connection takes no more requests (net/http
			// closes it after the response; HTTP/2 sends GOAWAY).
			w.Header().Set("Connection", "close")
		}
		ctx, span := s.tp.StartServer(r.Context(), r)
		sw := &statusWriter{ResponseWriter: w, code: 200}
		h.ServeHTTP(sw, r.WithContext(ctx))
		m.inboundRq.WithLabelValues(classes[statusClass(sw.code)]).Inc()
		m.inboundDuration.Observe(time.Since(start).Seconds())
		if r.ProtoMajor == 2 && isGRPCRequest(r) {
			tracing.EndGRPC(span, sw.code, tracing.GRPCStatus(w.Header(), trailerView(w.Header())), tracing.OutcomeOK)
		} else {
			tracing.EndHTTP(span, sw.code, outcomeForLocal(sw))
		}
	})
}

func outcomeForLocal(sw *statusWriter) tracing.Outcome {
	if sw.Header().Get("x-sidemesh-overloaded") != "" {
		return tracing.OutcomeOverloaded
	}
	return tracing.OutcomeOK
}

// statusWriter records the status; Unwrap keeps Flush and trailers working
// through http.ResponseController.
type statusWriter struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.code, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Flush() {
	w.wrote = true
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func isGRPCRequest(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return len(ct) >= 16 && ct[:16] == "application/grpc"
}

// trailerView returns the trailers a handler set with http.TrailerPrefix.
func trailerView(h http.Header) http.Header {
	out := http.Header{}
	for k, v := range h {
		if len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix {
			out[k[len(http.TrailerPrefix):]] = v
		}
	}
	return out
}
