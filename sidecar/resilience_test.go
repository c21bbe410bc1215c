package sidecar

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/outlier"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

func clusterStatus(t *testing.T, s *Sidecar, name string) ClusterStatus {
	t.Helper()
	for _, c := range s.Clusters() {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no cluster %s", name)
	return ClusterStatus{}
}

func endpointHealth(t *testing.T, s *Sidecar, addr string) EndpointStatus {
	t.Helper()
	for _, e := range clusterStatus(t, s, "api").Endpoints {
		if e.Address == addr {
			return e
		}
	}
	t.Fatalf("no endpoint %s", addr)
	return EndpointStatus{}
}

func always(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) }
}

// resetting closes the connection without an answer.
func resetting(w http.ResponseWriter, r *http.Request) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("no hijacker")
	}
	c, _, _ := hj.Hijack()
	c.Close()
}

// A failing endpoint is ejected after consecutive_5xx and gets no traffic
// until its ejection ends; then it comes back.
func TestOutlierEjectsFailingEndpoint(t *testing.T) {
	good := startBackend(t, "good", nil)
	bad := startBackend(t, "bad", always(500))
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    outlier_detection: {consecutive_5xx: 5, interval: 100ms, base_ejection_time: 1500ms, max_ejection_percent: 50}
`, endpointsYAML("api", good.addr, 1, bad.addr, 1))
	url := "http://" + s.UpstreamAddr("api") + "/"
	c := h1Client()
	seen500 := 0
	for i := 0; i < 200 && bad.hits.Load() < 5; i++ {
		resp, _ := get(t, c, url)
		if resp.StatusCode == 500 {
			seen500++
		}
	}
	if seen500 != 5 {
		t.Fatalf("client saw %d failing answers before ejection, want exactly consecutive_5xx = 5", seen500)
	}
	e := endpointHealth(t, s, bad.addr)
	if e.Health != "ejected" || e.EjectionsTotal != 1 {
		t.Fatalf("bad endpoint after 5 failures: %+v", e)
	}
	ejectedAt := time.Now()
	hits := bad.hits.Load()
	// While it is ejected, no traffic reaches it: every request that both
	// starts and ends with the endpoint reported ejected goes elsewhere.
	during := 0
	for ; during < 20; during++ {
		resp, _ := get(t, c, url)
		if endpointHealth(t, s, bad.addr).Health != "ejected" {
			break // the ejection ended during this request
		}
		if resp.StatusCode != 200 || bad.hits.Load() != hits {
			t.Fatalf("status %d, %d requests to the ejected endpoint", resp.StatusCode, bad.hits.Load()-hits)
		}
	}
	if during == 0 {
		t.Fatal("the ejection ended before any request could test it")
	}
	// After the ejection time, it is back.
	eventually(t, 10*time.Second, "un-ejection", func() bool { return endpointHealth(t, s, bad.addr).Health == "healthy" })
	eventually(t, 5*time.Second, "traffic to the returned endpoint", func() bool {
		get(t, c, url)
		return bad.hits.Load() > hits
	})
	t.Logf("client saw %d failing answers before ejection; ejection lasted %v", seen500, time.Since(ejectedAt).Round(100*time.Millisecond))
}

// Breaker overflow answers at once, names the threshold, and causes no ejection.
func TestBreakerOverflow(t *testing.T) {
	release := make(chan struct{})
	var inflight sync.WaitGroup
	slow := startBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		<-release
		fmt.Fprint(w, "done")
	})
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    circuit_breakers: {max_requests: 2}
    outlier_detection: {consecutive_5xx: 1, consecutive_local_origin_failure: 1, interval: 50ms}
`, endpointsYAML("api", slow.addr, 1))
	url := "http://" + s.UpstreamAddr("api") + "/"
	c := h1Client()
	for i := 0; i < 2; i++ {
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			resp, err := c.Get(url)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	eventually(t, 5*time.Second, "two requests in flight", func() bool { return slow.hits.Load() == 2 })
	var worst time.Duration
	for i := 0; i < 20; i++ {
		start := time.Now()
		resp, body := get(t, c, url)
		if d := time.Since(start); d > worst {
			worst = d
		}
		if resp.StatusCode != 503 || resp.Header.Get("x-sidemesh-overloaded") != "true" ||
			body != "upstream overloaded: circuit breaker threshold max_requests (2) overflowed" {
			t.Fatalf("overflow answer: %d %q %q", resp.StatusCode, resp.Header.Get("x-sidemesh-overloaded"), body)
		}
	}
	close(release)
	inflight.Wait()
	if e := endpointHealth(t, s, slow.addr); e.Health != "healthy" || e.EjectionsTotal != 0 {
		t.Fatalf("overflow counted against the endpoint: %+v", e)
	}
	resp, _ := get(t, c, url)
	if resp.StatusCode != 200 {
		t.Fatalf("after release: %d", resp.StatusCode)
	}
	_, metrics := get(t, c, "http://"+s.AdminAddr()+"/metrics")
	if !strings.Contains(metrics, `sidemesh_upstream_overflow_total{threshold="max_requests",upstream="api"} 20`) {
		t.Fatalf("overflow metric missing:\n%s", grepLines(metrics, "overflow"))
	}
	t.Logf("20 overflow answers, slowest %v", worst)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Retries hide a resetting endpoint from the client, on another endpoint.
func TestRetriesHideResets(t *testing.T) {
	good := startBackend(t, "good", nil)
	reset := startBackend(t, "reset", resetting)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    lb_policy: round_robin
    retry_policy: {retry_on: "reset,connect-failure", num_retries: 2, retry_back_off: {base_interval: 1ms}}
    outlier_detection: {consecutive_local_origin_failure: 1000, consecutive_5xx: 1000}
  - service: noretry
    listen: 127.0.0.1:0
    retry_policy: {retry_on: "5xx", num_retries: 0}
`, endpointsYAML("api", good.addr, 1, reset.addr, 1)+"  noretry:\n    - {address: "+reset.addr+", weight: 1}\n")
	c := h1Client()
	for i := 0; i < 50; i++ {
		resp, body := get(t, c, "http://"+s.UpstreamAddr("api")+"/")
		if resp.StatusCode != 200 || body != "hello from good" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if reset.hits.Load() == 0 {
		t.Fatal("the resetting endpoint was never tried; the test proves nothing")
	}
	if got := good.lastRequest().Header.Get("X-Sidemesh-Attempt-Count"); got != "1" && got != "2" {
		t.Fatalf("attempt count header %q", got)
	}
	// Without retries the client sees the contract's 503.
	resp, body := get(t, c, "http://"+s.UpstreamAddr("noretry")+"/")
	if resp.StatusCode != 503 || !strings.Contains(body, "reset before headers") {
		t.Fatalf("reset without retry: %d %q", resp.StatusCode, body)
	}
	t.Logf("50 requests all 200; %d attempts hit the resetting endpoint and were retried", reset.hits.Load())
}

// A per-try timeout moves a hanging attempt to another endpoint.
func TestPerTryTimeoutRetries(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	good := startBackend(t, "good", nil)
	slow := startBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	})
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    retry_policy: {retry_on: "5xx", num_retries: 1, per_try_timeout: 100ms, retry_back_off: {base_interval: 1ms}}
`, endpointsYAML("api", good.addr, 1, slow.addr, 1))
	c := h1Client()
	for i := 0; i < 10; i++ {
		resp, body := get(t, c, "http://"+s.UpstreamAddr("api")+"/")
		if resp.StatusCode != 200 || body != "hello from good" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if slow.hits.Load() == 0 {
		t.Fatal("the hanging endpoint was never tried")
	}
}

// A health check excludes an endpoint whose /healthz fails and brings it
// back when it recovers.
func TestHealthCheckExcludesAndRestores(t *testing.T) {
	var sick atomic.Bool
	hc := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if sick.Load() {
				w.WriteHeader(503)
			}
			return
		}
		fmt.Fprint(w, "flaky")
	}
	good := startBackend(t, "good", nil)
	flaky := startBackend(t, "flaky", hc)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    health_check: {http: /healthz, interval: 50ms, no_traffic_interval: 50ms, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 2}
`, endpointsYAML("api", good.addr, 1, flaky.addr, 1))
	c := h1Client()
	url := "http://" + s.UpstreamAddr("api") + "/"
	eventually(t, 10*time.Second, "both endpoints pass their first check", func() bool {
		return endpointHealth(t, s, flaky.addr).Health == "healthy" && endpointHealth(t, s, good.addr).Health == "healthy"
	})
	sick.Store(true)
	eventually(t, 10*time.Second, "flaky marked failed_health_check", func() bool {
		return endpointHealth(t, s, flaky.addr).Health == "failed_health_check"
	})
	for i := 0; i < 50; i++ {
		if _, body := get(t, c, url); body != "hello from good" {
			t.Fatalf("traffic reached the failing endpoint: %q", body)
		}
	}
	sick.Store(false)
	eventually(t, 10*time.Second, "flaky back", func() bool { return endpointHealth(t, s, flaky.addr).Health == "healthy" })
	eventually(t, 5*time.Second, "traffic back on flaky", func() bool {
		_, body := get(t, c, url)
		return body == "flaky"
	})
}

// Panic mode engages below healthy_panic_threshold: traffic goes to all
// endpoints, and /clusters and /metrics say so.
func TestPanicMode(t *testing.T) {
	var sick atomic.Bool
	mk := func(name string) *backend {
		return startBackend(t, name, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/healthz" && sick.Load() {
				w.WriteHeader(503)
				return
			}
			fmt.Fprint(w, name)
		})
	}
	a, b, c3 := mk("a"), mk("b"), mk("c")
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    healthy_panic_threshold: 50
    health_check: {http: /healthz, interval: 50ms, no_traffic_interval: 50ms, unhealthy_threshold: 1, healthy_threshold: 1}
`, endpointsYAML("api", a.addr, 1, b.addr, 1, c3.addr, 1))
	eventually(t, 10*time.Second, "all healthy", func() bool { return clusterStatus(t, s, "api").HealthyHosts == 3 })
	if clusterStatus(t, s, "api").Panic {
		t.Fatal("panic mode with every endpoint healthy")
	}
	sick.Store(true) // all three fail: 0% < 50%
	eventually(t, 10*time.Second, "panic mode", func() bool { return clusterStatus(t, s, "api").Panic })
	cl := h1Client()
	seen := map[string]bool{}
	for i := 0; i < 30; i++ {
		resp, body := get(t, cl, "http://"+s.UpstreamAddr("api")+"/")
		if resp.StatusCode != 200 {
			t.Fatalf("panic routing answered %d %q", resp.StatusCode, body)
		}
		seen[body] = true
	}
	if len(seen) != 3 {
		t.Fatalf("panic mode should balance across all endpoints, saw %v", seen)
	}
	_, metrics := get(t, cl, "http://"+s.AdminAddr()+"/metrics")
	if !strings.Contains(metrics, `sidemesh_upstream_panic_mode{upstream="api"} 1`) {
		t.Fatalf("panic metric:\n%s", grepLines(metrics, "panic"))
	}
	var raw map[string]any
	_, body := get(t, cl, "http://"+s.AdminAddr()+"/clusters")
	_ = json.Unmarshal([]byte(body), &raw)
	if !strings.Contains(body, `"panic_mode": true`) {
		t.Fatalf("/clusters does not show panic mode: %s", body)
	}
	sick.Store(false)
	eventually(t, 10*time.Second, "panic over", func() bool { return !clusterStatus(t, s, "api").Panic })
}

// The pick plus the resilience wrappers on the request path: breaker in,
// pick, then Done: outlier record, metrics, breaker out. No allocation, no
// mutex.
func BenchmarkPickWithWrappers(b *testing.B) {
	be := benchBackend(b)
	s, _ := startSidecar(b, oneUpstream, endpointsYAML("api", be.addr, 1, "127.0.0.1:1", 2, "127.0.0.1:2", 3))
	c := s.Cluster("api")
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		info := &balancer.PickInfo{}
		for pb.Next() {
			p, err := c.guarded().pick(info, nil, false)
			if err != nil {
				b.Fatal(err)
			}
			p.Done(DoneInfo{Status: 200, Outlier: outlier.Status(200), Latency: time.Millisecond})
		}
	})
}

func TestPickWithWrappersAllocs(t *testing.T) {
	be := startBackend(t, "b", nil)
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", be.addr, 1, "127.0.0.1:1", 2))
	c := s.Cluster("api")
	info := &balancer.PickInfo{}
	n := testing.AllocsPerRun(1000, func() {
		p, err := c.guarded().pick(info, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		p.Done(DoneInfo{Status: 503, Outlier: outlier.Status(503), Latency: time.Millisecond})
	})
	if n != 0 {
		t.Fatalf("pick with wrappers allocates %v per op", n)
	}
}

// An endpoint that refuses connections is ejected on consecutive local-origin
// failures, and retries on connect-failure hide it from the client meanwhile.
func TestRefusingEndpointEjected(t *testing.T) {
	good := startBackend(t, "good", nil)
	dead := deadAddr(t)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    outlier_detection: {consecutive_local_origin_failure: 3, split_external_local_origin_errors: true, interval: 100ms, base_ejection_time: 30s, max_ejection_percent: 50}
`, endpointsYAML("api", good.addr, 1, dead, 1))
	c := h1Client()
	for i := 0; i < 40; i++ {
		resp, body := get(t, c, "http://"+s.UpstreamAddr("api")+"/")
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %q (the default retry on connect-failure should hide the refusing endpoint)", i, resp.StatusCode, body)
		}
	}
	e := endpointHealth(t, s, dead)
	if e.Health != "ejected" || e.EjectionsTotal != 1 || e.RqError != 3 {
		t.Fatalf("refusing endpoint: %+v, want ejected after exactly 3 connect failures", e)
	}
}

func deadAddr(t *testing.T) string { return testenv.RefusedAddr(t) }
