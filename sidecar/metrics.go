package sidecar

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidemesh/sidemesh/sidecar/outlier"
)

// Metrics is the sidecar's one metrics pipeline (prometheus/client_golang,
// served on /metrics). Every name starts with sidemesh_.
// sidemesh_upstream_rq_total is per upstream and status class by default;
// with metrics.per_endpoint it also has the endpoint label (as Envoy keeps
// per-host stats out of its default export: a mesh of thousands of
// endpoints would otherwise drown Prometheus). Per-endpoint counters are
// on /clusters either way. Series are bound once (per upstream, or per
// host when per endpoint) so the request path does no label lookups.
//
// Sized for a sidecar with many upstreams (issue: 50 upstreams × 200
// endpoints within 2,000 lines): as in Envoy, whose upstream_rq_<class>
// counters and upstream_rq_time histogram come into being with the first
// response, a status class's sidemesh_upstream_rq_total series and an
// upstream's sidemesh_upstream_rq_duration_seconds appear on first use;
// the duration histogram has eight buckets (1 and 5 per decade, 1 ms to
// 5 s); and sidemesh_upstream_ejections_total has a series only for the
// ejection types the upstream's outlier detection can enforce.
type Metrics struct {
	Registry *prometheus.Registry

	rq               *prometheus.CounterVec // upstream, [endpoint,] class
	perEndpoint      bool
	rqDuration       *prometheus.HistogramVec // upstream
	rqActive         *prometheus.GaugeVec     // upstream
	cxActive         *prometheus.GaugeVec     // upstream
	retries          *prometheus.CounterVec   // upstream
	panic            *prometheus.GaugeVec     // upstream
	priorityLoad     *prometheus.GaugeVec     // upstream, priority
	discoveryUpdates *prometheus.CounterVec   // upstream
	discoveryErrors  *prometheus.CounterVec   // upstream, kind
	noHealthy        *prometheus.CounterVec   // upstream
	inboundRq        *prometheus.CounterVec   // class
	inboundDuration  prometheus.Histogram
	tcpBytes         *prometheus.CounterVec // upstream, direction

	mu       sync.Mutex
	hosts    map[[2]string]*hostMetrics // per endpoint (perEndpoint)
	upstream map[string]*hostMetrics    // shared by an upstream's hosts (default)
}

// clusterMetrics are the per-upstream series, bound once.
type clusterMetrics struct {
	rqActive   prometheus.Gauge
	cxActive   prometheus.Gauge
	retries    prometheus.Counter
	noHealthy  prometheus.Counter
	rqDuration *lazyObserver
}

func (m *Metrics) cluster(name string) *clusterMetrics {
	return &clusterMetrics{
		rqActive:   m.rqActive.WithLabelValues(name),
		cxActive:   m.cxActive.WithLabelValues(name),
		retries:    m.retries.WithLabelValues(name),
		noHealthy:  m.noHealthy.WithLabelValues(name),
		rqDuration: &lazyObserver{vec: m.rqDuration, label: name},
	}
}

// lazyObserver is an upstream's duration histogram, bound (and so
// exported) on the first observation.
type lazyObserver struct {
	once  sync.Once
	o     prometheus.Observer
	vec   *prometheus.HistogramVec
	label string
}

func (l *lazyObserver) Observe(v float64) {
	l.once.Do(func() { l.o = l.vec.WithLabelValues(l.label) })
	l.o.Observe(v)
}

// hostMetrics are the sidemesh_upstream_rq_total series of an upstream
// (or, per endpoint, of a host): one per status class, each bound on its
// first increment.
type hostMetrics struct {
	vec    *prometheus.CounterVec
	labels []string        // upstream[, endpoint]; the class is appended
	class  [6]classCounter // index status/100 (0 = no response)
}

// classCounter is one status class's counter of a hostMetrics.
type classCounter struct {
	once sync.Once
	c    prometheus.Counter
	h    *hostMetrics
	i    uint8
}

// Inc counts one response (or failure, class 0), binding the series on
// the first one.
func (cc *classCounter) Inc() {
	cc.once.Do(func() {
		cc.c = cc.h.vec.WithLabelValues(append(cc.h.labels[:len(cc.h.labels):len(cc.h.labels)], classes[cc.i])...)
	})
	cc.c.Inc()
}

func newHostMetrics(vec *prometheus.CounterVec, labels ...string) *hostMetrics {
	h := &hostMetrics{vec: vec, labels: labels}
	for i := range h.class {
		h.class[i].h, h.class[i].i = h, uint8(i)
	}
	return h
}

var classes = [6]string{"error", "1xx", "2xx", "3xx", "4xx", "5xx"}

// upstreamDurationBuckets are sidemesh_upstream_rq_duration_seconds'
// bounds: 1 and 5 per decade from 1 ms to 5 s (and +Inf), few enough for
// many upstreams per sidecar.
var upstreamDurationBuckets = []float64{.001, .005, .01, .05, .1, .5, 1, 5}

// newMetrics is the default pipeline (per-upstream series).
func newMetrics() *Metrics { return newMetricsWith(false) }

// newMetricsWith is newMetrics with metrics.per_endpoint.
func newMetricsWith(perEndpoint bool) *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{Registry: r, perEndpoint: perEndpoint, hosts: map[[2]string]*hostMetrics{}, upstream: map[string]*hostMetrics{}}
	f := func(c prometheus.Collector) { r.MustRegister(c) }
	labels := []string{"upstream", "class"}
	if perEndpoint {
		labels = []string{"upstream", "endpoint", "class"}
	}
	m.rq = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidemesh_upstream_rq_total",
		Help: "Requests (attempts) sent to upstream endpoints, by response status class (error = no response)."},
		labels)
	m.rqDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sidemesh_upstream_rq_duration_seconds",
		Help:    "Time from request to response headers, per upstream request (all attempts).",
		Buckets: upstreamDurationBuckets},
		[]string{"upstream"})
	m.rqActive = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sidemesh_upstream_rq_active",
		Help: "Requests in flight per upstream."}, []string{"upstream"})
	m.cxActive = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sidemesh_upstream_cx_active",
		Help: "Open connections per upstream (HTTP pools and TCP)."}, []string{"upstream"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidemesh_upstream_rq_retry_total",
		Help: "Retries sent."}, []string{"upstream"})
	m.panic = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sidemesh_upstream_panic_mode",
		Help: "1 while the upstream balances across all endpoints because too few are healthy."}, []string{"upstream"})
	m.priorityLoad = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sidemesh_upstream_priority_load",
		Help: "Share of the upstream's traffic (0..1) each priority level takes (Envoy's priority load)."}, []string{"upstream", "priority"})
	m.discoveryUpdates = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidemesh_discovery_updates_total",
		Help: "Endpoint snapshots applied."}, []string{"upstream"})
	m.discoveryErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidemesh_discovery_errors_total",
		Help: "Discovery errors: ambient (last endpoints kept) or resource (endpoints dropped)."}, []string{"upstream", "kind"})
	m.noHealthy = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidemesh_upstream_rq_no_healthy_total",
		Help: "Requests answered 503 because no endpoint was eligible."}, []string{"upstream"})
	m.inboundRq = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidemesh_inbound_rq_total",
		Help: "Requests through the inbound listener to the local app, by status class."}, []string{"class"})
	m.inboundDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "sidemesh_inbound_rq_duration_seconds",
		Help: "Inbound request time to response headers.", Buckets: prometheus.DefBuckets})
	m.tcpBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidemesh_tcp_bytes_total",
		Help: "Bytes relayed by TCP upstream listeners."}, []string{"upstream", "direction"})
	for _, c := range []prometheus.Collector{m.rq, m.rqDuration, m.rqActive, m.cxActive, m.retries,
		m.panic, m.priorityLoad, m.discoveryUpdates, m.discoveryErrors, m.noHealthy, m.inboundRq, m.inboundDuration, m.tcpBytes} {
		f(c)
	}
	return m
}

// host returns the counters an endpoint's requests go to: its own with
// per_endpoint, else its upstream's (bound on the upstream's first host;
// nothing is allocated per further host).
func (m *Metrics) host(upstream, addr string) *hostMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.perEndpoint {
		if h, ok := m.upstream[upstream]; ok {
			return h
		}
		h := newHostMetrics(m.rq, upstream)
		m.upstream[upstream] = h
		return h
	}
	k := [2]string{upstream, addr}
	if h, ok := m.hosts[k]; ok {
		return h
	}
	h := newHostMetrics(m.rq, upstream, addr)
	m.hosts[k] = h
	return h
}

// dropHost removes a departed endpoint's series (per_endpoint only: the
// upstream's series stay).
func (m *Metrics) dropHost(upstream, addr string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.perEndpoint {
		return
	}
	delete(m.hosts, [2]string{upstream, addr})
	for _, cl := range classes {
		m.rq.DeleteLabelValues(upstream, addr, cl)
	}
}

func statusClass(code int) int {
	if code < 100 || code > 599 {
		return 0
	}
	return code / 100
}

// stateCollector reads counters that live in the resilience packages
// (breakers, outlier detectors) and in the optional components (discovery,
// registration, xDS, tracing) at scrape time, so the
// request path never touches a second set of counters.
type stateCollector struct {
	s *Sidecar
}

var (
	descEjections = prometheus.NewDesc("sidemesh_upstream_ejections_total",
		"Outlier ejections enforced, by detector (Envoy's ejections_enforced_*).", []string{"upstream", "type"}, nil)
	descEjectionsActive = prometheus.NewDesc("sidemesh_upstream_ejections_active",
		"Endpoints ejected now.", []string{"upstream"}, nil)
	descOverflow = prometheus.NewDesc("sidemesh_upstream_overflow_total",
		"Requests refused by a circuit breaker, by the threshold that overflowed (for max_connections: dials that had to wait).",
		[]string{"upstream", "threshold"}, nil)
	descBreakerActive = prometheus.NewDesc("sidemesh_upstream_breaker_active",
		"Current use of each circuit-breaker threshold.", []string{"upstream", "threshold"}, nil)
	descBreakerOpen = prometheus.NewDesc("sidemesh_upstream_breaker_open",
		"1 while a circuit-breaker threshold is reached.", []string{"upstream", "threshold"}, nil)
)

func (sc stateCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(sc, ch) }

func (sc stateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, c := range sc.s.clusterList() {
		for _, t := range c.breaker().Stats().All() {
			th := string(t.Threshold)
			ch <- prometheus.MustNewConstMetric(descOverflow, prometheus.CounterValue, float64(t.Overflows), c.Name, th)
			ch <- prometheus.MustNewConstMetric(descBreakerActive, prometheus.GaugeValue, float64(t.Active), c.Name, th)
			open := 0.0
			if t.Open {
				open = 1
			}
			ch <- prometheus.MustNewConstMetric(descBreakerOpen, prometheus.GaugeValue, open, c.Name, th)
		}
		if od := c.detector(); od != nil {
			st := od.Counters()
			for i, n := range st.EjectionsEnforced {
				if t := outlier.EjectionType(i); od.CanEnforce(t) || n > 0 {
					ch <- prometheus.MustNewConstMetric(descEjections, prometheus.CounterValue, float64(n), c.Name, t.String())
				}
			}
			ch <- prometheus.MustNewConstMetric(descEjectionsActive, prometheus.GaugeValue, float64(st.EjectionsActive), c.Name)
		}
	}
	sc.s.collectComponents(ch)
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

// collectComponents reports the optional components' counters.
func (s *Sidecar) collectComponents(ch chan<- prometheus.Metric) {
	if cs := s.consulSource(); cs != nil {
		now := time.Now()
		for _, st := range cs.Stats() {
			if st.Datacenter != "" {
				continue // failover datacenters: their errors count in sidemesh_discovery_errors_total
			}
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
			short := typ[strings.LastIndexByte(typ, '.')+1:]
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
