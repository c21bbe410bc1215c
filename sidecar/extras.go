package sidecar

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidemesh/sidemesh/discovery/consul"
	"github.com/sidemesh/sidemesh/tracing"
)

// setupTracing builds the tracer provider (a nil config means off; the
// nil provider is a working no-op).
func (s *Sidecar) setupTracing() error {
	if s.cfg.Tracing == nil {
		return nil
	}
	name := s.cfg.Node
	if s.cfg.Service != nil {
		name = s.cfg.Service.Name
	}
	tp, err := tracing.Setup(context.Background(), s.cfg.Tracing,
		tracing.Resource{ServiceName: name, InstanceID: s.cfg.Node, Version: Version}, s.log) // Setup adds component=tracing
	if err != nil {
		return err
	}
	s.tp = tp
	return nil
}

// startExtras binds and starts what hangs off the data plane: the embedded
// xDS server and Consul registration. Called from Start after the data-plane
// listeners are bound and before anything serves.
func (s *Sidecar) startExtras() error {
	if err := s.startXDSServer(); err != nil {
		return err
	}
	if s.consul != nil && s.cfg.Service != nil {
		reg, err := s.registration()
		if err != nil {
			return err
		}
		r, err := consul.NewRegistrar(*s.cfg.Discovery.Consul, reg, consul.RegistrarOptions{Logger: s.log.With("component", "consul-registrar")})
		if err != nil {
			return err
		}
		ctx, cancel := context.WithCancel(context.Background())
		s.reg, s.regStop, s.regDone = r, cancel, make(chan struct{})
		go func() {
			defer close(s.regDone)
			if err := r.Run(ctx); err != nil {
				s.log.Error("consul deregistration failed", "err", err)
			}
		}()
	}
	return nil
}

// registration describes this instance for Consul: the registered address
// and the inbound port; a check on /ready through the probe listener (or
// admin when there is none), which also covers service.health_check since
// the sidecar runs the app's check itself.
func (s *Sidecar) registration() (consul.Registration, error) {
	sv := s.cfg.Service
	if sv.Inbound == "" {
		return consul.Registration{}, fmt.Errorf("%w: service.inbound: must be set to register in Consul (it is the address other sidecars reach)", ErrConfig)
	}
	port := s.inboundLn.Addr().(*net.TCPAddr).Port
	reg := consul.Registration{
		ID: s.cfg.Node, Name: sv.Name, Address: s.regAddr, Port: port, Weight: sv.Weight, Tags: sv.Tags,
		Meta: map[string]string{"sidemesh_version": Version},
	}
	check := &consul.Check{HTTP: "http://" + s.adminLn.Addr().String() + "/ready", Interval: 5 * time.Second, Timeout: 2 * time.Second,
		DeregisterCriticalServiceAfter: *sv.DeregisterCriticalAfter}
	if s.probeLn != nil {
		check.HTTP = "http://" + net.JoinHostPort(s.regAddr, strconv.Itoa(s.probeLn.Addr().(*net.TCPAddr).Port)) + "/ready"
	}
	if hc := sv.HealthCheck; hc != nil {
		check.Interval = hc.Interval
	}
	reg.Check = check
	if err := reg.Validate("service"); err != nil {
		return reg, err
	}
	return reg, nil
}

// registeredAddress is the address other hosts reach this instance at:
// service.address, else the inbound listener's IP when it is a specific
// one, else detected from the route to the Consul agent.
func registeredAddress(cfg *Config) (string, error) {
	sv := cfg.Service
	if sv.Address != "" {
		return sv.Address, nil
	}
	if host, _, err := net.SplitHostPort(sv.Inbound); err == nil && host != "" {
		if ip, err := netip.ParseAddr(host); err != nil || !ip.IsUnspecified() {
			return host, nil
		}
	}
	ip, err := consul.DetectAddress(cfg.Discovery.Consul.Address)
	if err != nil {
		return "", fmt.Errorf("%w: service.address: not set and could not be detected (%v); set it, e.g. address: ${POD_IP}", ErrConfig, err)
	}
	return ip.String(), nil
}

// stopExtrasEarly runs first on shutdown: deregister from Consul so other
// sidecars stop sending here while we drain.
func (s *Sidecar) stopExtrasEarly() {
	if s.regStop != nil {
		s.regStop()
		<-s.regDone
	}
}

// stopExtras runs last on shutdown.
func (s *Sidecar) stopExtras() {
	if s.xdsSrv != nil {
		s.xdsSrv.Stop()
	}
	if s.tp != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.tp.Shutdown(ctx)
	}
}

func (s *Sidecar) extraDump(out map[string]any) {
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

var (
	descConsulFailures = prometheus.NewDesc("sidemesh_discovery_consul_failures_total",
		"Failed Consul health queries (the last endpoints stay in service).", []string{"upstream"}, nil)
	descConsulQueries = prometheus.NewDesc("sidemesh_discovery_consul_queries_total",
		"Consul blocking queries made.", []string{"upstream"}, nil)
	descConsulStale = prometheus.NewDesc("sidemesh_discovery_stale_seconds",
		"Seconds since the discovery source last vouched for the endpoints.", []string{"upstream"}, nil)
	descXDSClient = prometheus.NewDesc("sidemesh_xds_client_responses_total",
		"xDS responses received by the client, by type and verdict (update = received, ack, nack).", []string{"type", "verdict"}, nil)
	descXDSConnected = prometheus.NewDesc("sidemesh_xds_client_connected", "1 while the ADS stream is up.", nil, nil)
	descXDSServer    = prometheus.NewDesc("sidemesh_xds_server_requests_total",
		"xDS requests received by the embedded server, by verdict (request, ack, nack).", []string{"verdict"}, nil)
	descXDSStreams    = prometheus.NewDesc("sidemesh_xds_server_streams", "Open xDS streams on the embedded server.", nil, nil)
	descSpans         = prometheus.NewDesc("sidemesh_tracing_spans_total", "Spans ended, by fate (exported, dropped).", []string{"fate"}, nil)
	descRegistrations = prometheus.NewDesc("sidemesh_consul_registrations_total", "Registrations of this instance made in Consul.", nil, nil)
)

func (s *Sidecar) collectExtras(ch chan<- prometheus.Metric) {
	if s.consul != nil {
		now := time.Now()
		for _, st := range s.consul.Stats() {
			ch <- prometheus.MustNewConstMetric(descConsulFailures, prometheus.CounterValue, float64(st.FailuresTotal), st.Service)
			ch <- prometheus.MustNewConstMetric(descConsulQueries, prometheus.CounterValue, float64(st.QueriesTotal), st.Service)
			ch <- prometheus.MustNewConstMetric(descConsulStale, prometheus.GaugeValue, st.Stale(now).Seconds(), st.Service)
		}
	}
	if s.reg != nil {
		ch <- prometheus.MustNewConstMetric(descRegistrations, prometheus.CounterValue, float64(s.reg.Stats().Registrations))
	}
	if s.xdsCli != nil {
		st := s.xdsCli.Stats()
		up := 0.0
		if st.Connected {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descXDSConnected, prometheus.GaugeValue, up)
		for typ, ts := range st.Types {
			short := typ[lastDot(typ)+1:]
			ch <- prometheus.MustNewConstMetric(descXDSClient, prometheus.CounterValue, float64(ts.Updates), short, "update")
			ch <- prometheus.MustNewConstMetric(descXDSClient, prometheus.CounterValue, float64(ts.ACKs), short, "ack")
			ch <- prometheus.MustNewConstMetric(descXDSClient, prometheus.CounterValue, float64(ts.NACKs), short, "nack")
		}
	}
	if s.xdsSrv != nil {
		st := s.xdsSrv.Stats()
		ch <- prometheus.MustNewConstMetric(descXDSServer, prometheus.CounterValue, float64(st.Requests), "request")
		ch <- prometheus.MustNewConstMetric(descXDSServer, prometheus.CounterValue, float64(st.ACKs), "ack")
		ch <- prometheus.MustNewConstMetric(descXDSServer, prometheus.CounterValue, float64(st.NACKs), "nack")
		ch <- prometheus.MustNewConstMetric(descXDSStreams, prometheus.GaugeValue, float64(st.Streams))
	}
	if s.tp != nil {
		exported, dropped := s.tp.Stats()
		ch <- prometheus.MustNewConstMetric(descSpans, prometheus.CounterValue, float64(exported), "exported")
		ch <- prometheus.MustNewConstMetric(descSpans, prometheus.CounterValue, float64(dropped), "dropped")
	}
}

func lastDot(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '.' {
			return i
		}
	}
	return -1
}

// wrapHandler adds the inbound server span and inbound metrics.
func (s *Sidecar) wrapHandler(c *Cluster, h http.Handler) http.Handler {
	if !c.inbound {
		return h
	}
	m := s.m
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
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
