package sidecar

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// By default /metrics has per-upstream series only: its size does not
// grow with the endpoints. metrics.per_endpoint adds the endpoint label.
// Either way a status class's series appears with its first response (as
// Envoy's upstream_rq_<class> counters).
func TestMetricsPerEndpointOnlyWhenAsked(t *testing.T) {
	eps := []any{}
	for i := range 500 {
		eps = append(eps, fmt.Sprintf("127.0.%d.%d:9", 1+i/250, 1+i%250), 1)
	}
	series := func(perEndpoint bool) []string {
		cfg := oneUpstream
		if perEndpoint {
			cfg += "metrics: {per_endpoint: true}\n"
		}
		s, _ := startSidecar(t, cfg, endpointsYAML("api", eps...))
		c := s.clusterList()[0]
		c.mu.Lock()
		a, b := c.hosts["127.0.1.1:9"], c.hosts["127.0.2.2:9"]
		c.mu.Unlock()
		for _, d := range []struct {
			h    *Host
			info DoneInfo
		}{{a, DoneInfo{Status: 200}}, {a, DoneInfo{Status: 201}}, {b, DoneInfo{Fail: failConnect}}} {
			d.h.Active.Add(1)
			picked{Host: d.h, c: c}.Done(d.info)
		}
		_, body := metricsLines(t, s)
		var got []string
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "sidemesh_upstream_rq_total") {
				got = append(got, l)
			}
		}
		return got
	}
	want := []string{`sidemesh_upstream_rq_total{class="2xx",upstream="api"} 2`, `sidemesh_upstream_rq_total{class="error",upstream="api"} 1`}
	if got := series(false); !slices.Equal(got, want) {
		t.Errorf("default: series\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	want = []string{`sidemesh_upstream_rq_total{class="2xx",endpoint="127.0.1.1:9",upstream="api"} 2`,
		`sidemesh_upstream_rq_total{class="error",endpoint="127.0.2.2:9",upstream="api"} 1`}
	if got := series(true); !slices.Equal(got, want) {
		t.Errorf("per_endpoint: series\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// meshScale is the sidecar at mesh scale: 50 upstreams × 200
// endpoints from a file (loopback addresses nothing listens on; the test
// sends nothing to them).
func meshScale() (cfg, endpoints string) {
	var c, e strings.Builder
	c.WriteString("admin: 127.0.0.1:0\ndiscovery: {file: \"{{EP}}\"}\nupstreams:\n")
	e.WriteString("services:\n")
	for s := range 50 {
		fmt.Fprintf(&c, "  - {service: svc%d, listen: 127.0.0.1:0}\n", s)
		fmt.Fprintf(&e, "  svc%d:\n", s)
		for h := range 200 {
			fmt.Fprintf(&e, "    - {address: 127.0.%d.%d:9, weight: 1}\n", s+1, h+1)
		}
	}
	return c.String(), e.String()
}

// metricsLines counts the lines of /metrics (comments included, as a
// scraper reads them).
func metricsLines(t *testing.T, s *Sidecar) (int, string) {
	t.Helper()
	_, body := get(t, h1Client(), "http://"+s.AdminAddr()+"/metrics")
	return strings.Count(body, "\n"), body
}

// A sidecar with 10,000 endpoints over 50 upstreams keeps /metrics within
// 2,000 lines by default: at ready, and after every upstream has seen
// responses of three status classes (2xx, 5xx, no response) and latencies.
func TestMetricsLinesAtMeshScale(t *testing.T) {
	cfg, eps := meshScale()
	s, _ := startSidecar(t, cfg, eps)
	n, body := metricsLines(t, s)
	if n > 2000 {
		t.Fatalf("/metrics at ready: %d lines, want at most 2000:\n%s", n, body)
	}
	if strings.Contains(body, "sidemesh_upstream_rq_duration_seconds_bucket") || strings.Contains(body, "sidemesh_upstream_rq_total{") {
		t.Fatalf("series of requests before any request:\n%s", body)
	}
	clusters := s.clusterList()
	if len(clusters) != 50 {
		t.Fatalf("%d clusters, want 50", len(clusters))
	}
	for _, c := range clusters {
		c.mu.Lock()
		var h *Host
		for _, h = range c.hosts {
			break
		}
		c.mu.Unlock()
		for _, d := range []DoneInfo{{Status: 200, Latency: time.Millisecond}, {Status: 503, Latency: 2 * time.Second}, {Fail: failConnect}} {
			h.Active.Add(1)
			picked{Host: h, c: c}.Done(d)
		}
	}
	n, body = metricsLines(t, s)
	if n > 2000 {
		t.Fatalf("/metrics after traffic: %d lines, want at most 2000:\n%s", n, body)
	}
	for _, want := range []string{`sidemesh_upstream_rq_total{class="2xx",upstream="svc7"} 1`,
		`sidemesh_upstream_rq_total{class="5xx",upstream="svc7"} 1`, `sidemesh_upstream_rq_total{class="error",upstream="svc7"} 1`,
		`sidemesh_upstream_rq_duration_seconds_bucket{upstream="svc7",le="0.001"} 1`,
		`sidemesh_upstream_rq_duration_seconds_bucket{upstream="svc7",le="+Inf"} 2`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(body, `class="1xx"`) || strings.Contains(body, `class="3xx"`) || strings.Contains(body, `class="4xx"`) {
		t.Errorf("series of classes no response had")
	}
	t.Logf("/metrics: %d lines", n)
}

// sidemesh_upstream_ejections_total has a series per ejection type the
// upstream's outlier detection can enforce: by Envoy's defaults
// consecutive_5xx and success_rate (enforcing_consecutive_gateway_failure
// and enforcing_failure_percentage are 0; the local-origin types need
// split_external_local_origin_errors).
func TestMetricsEjectionTypesThatCanEnforce(t *testing.T) {
	types := func(cfg string) []string {
		s, _ := startSidecar(t, cfg, endpointsYAML("api", "127.0.0.1:9", 1))
		_, body := metricsLines(t, s)
		var got []string
		for _, l := range strings.Split(body, "\n") {
			if rest, ok := strings.CutPrefix(l, `sidemesh_upstream_ejections_total{type="`); ok {
				got = append(got, rest[:strings.IndexByte(rest, '"')])
			}
		}
		return got
	}
	if got := types(oneUpstream); !slices.Equal(got, []string{"consecutive_5xx", "success_rate"}) {
		t.Errorf("defaults: ejection types %v, want [consecutive_5xx success_rate]", got)
	}
	cfg := oneUpstream + "    outlier_detection: {enforcing_consecutive_gateway_failure: 100, consecutive_5xx: 0, split_external_local_origin_errors: true, enforcing_failure_percentage_local_origin: 50}\n"
	want := []string{"consecutive_gateway_failure", "consecutive_local_origin_failure", "failure_percentage_local_origin", "success_rate", "success_rate_local_origin"}
	if got := types(cfg); !slices.Equal(got, want) {
		t.Errorf("configured: ejection types %v, want %v", got, want)
	}
}
