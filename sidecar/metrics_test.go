package sidecar

import (
	"fmt"
	"strings"
	"testing"
)

// By default /metrics has per-upstream series only: its size does not
// grow with the endpoints. metrics.per_endpoint adds the endpoint label.
func TestMetricsPerEndpointOnlyWhenAsked(t *testing.T) {
	b := startBackend(t, "b1", nil)
	eps := []any{b.addr, 1}
	for i := range 500 {
		eps = append(eps, fmt.Sprintf("127.0.%d.%d:9", 1+i/250, 1+i%250), 1)
	}
	lines := func(perEndpoint bool) (int, string) {
		cfg := oneUpstream
		if perEndpoint {
			cfg += "metrics: {per_endpoint: true}\n"
		}
		s, _ := startSidecar(t, cfg, endpointsYAML("api", eps...))
		c := h1Client()
		if resp, _ := get(t, c, "http://"+s.UpstreamAddr("api")+"/", "X-Request-Id", "1"); resp.StatusCode != 200 && resp.StatusCode != 503 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		_, body := get(t, c, "http://"+s.AdminAddr()+"/metrics")
		n := 0
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "sidemesh_upstream_rq_total") {
				n++
			}
		}
		return n, body
	}
	n, body := lines(false)
	if n > len(classes) || strings.Contains(body, `endpoint="`) {
		t.Fatalf("default: %d sidemesh_upstream_rq_total series (want at most %d, no endpoint label):\n%s", n, len(classes), body)
	}
	n, body = lines(true)
	if n != len(classes)*501 || !strings.Contains(body, `endpoint="`+b.addr+`"`) {
		t.Fatalf("per_endpoint: %d series, want %d with the endpoint label", n, len(classes)*501)
	}
}
