package sidecar

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// With no retry left in the breaker, the upstream's own retriable answer
// reaches the client (Envoy), not a local 503 "reset".
func TestRetryOverflowKeepsUpstreamResponse(t *testing.T) {
	be := startBackend(t, "bad", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(500)
		fmt.Fprint(w, "boom")
	})
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    retry_policy: {retry_on: 5xx, num_retries: 2}
    circuit_breakers: {max_retries: 0}
    outlier_detection: {consecutive_5xx: 1000}
`, endpointsYAML("api", be.addr, 1))
	resp, body := get(t, h1Client(), "http://"+s.UpstreamAddr("api")+"/")
	if resp.StatusCode != 500 || body != "boom" || resp.Header.Get("x-sidemesh-local-reply") != "" {
		t.Fatalf("got %d %q (local reply %q), want the upstream's 500 \"boom\"", resp.StatusCode, body, resp.Header.Get("x-sidemesh-local-reply"))
	}
	if be.hits.Load() != 1 {
		t.Fatalf("backend hits = %d, want 1 (no retry budget)", be.hits.Load())
	}
	st := s.Cluster("api").breaker().Stats()
	if st.Requests.Active != 0 || st.Retries.Active != 0 {
		t.Fatalf("breaker not released: %+v", st)
	}
	// And with a budget, the retries happen and the last answer stands.
	be2 := startBackend(t, "bad2", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(503)
		fmt.Fprint(w, "still bad")
	})
	s2, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    retry_policy: {retry_on: 5xx, num_retries: 2, retry_back_off: {base_interval: 1ms}}
    circuit_breakers: {max_retries: 1}
    outlier_detection: {consecutive_5xx: 1000}
`, endpointsYAML("api", be2.addr, 1))
	resp, body = get(t, h1Client(), "http://"+s2.UpstreamAddr("api")+"/")
	if resp.StatusCode != 503 || body != "still bad" || be2.hits.Load() != 3 {
		t.Fatalf("got %d %q after %d hits, want the upstream's 503 after 3", resp.StatusCode, body, be2.hits.Load())
	}
	st = s2.Cluster("api").breaker().Stats()
	if st.Requests.Active != 0 || st.Retries.Active != 0 {
		t.Fatalf("breaker not released: %+v", st)
	}
}

// A dial waiting for a max_connections slot is detached from its request
// (net/http keeps dialing for the pool); it must not hold its pending slot
// for ever once nobody waits for it.
func TestDialWaitBounded(t *testing.T) {
	release := make(chan struct{})
	be := startBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		fmt.Fprint(w, "ok")
	})
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    timeout: 2s
    circuit_breakers: {max_connections: 1}
`, endpointsYAML("api", be.addr, 1))
	url := "http://" + s.UpstreamAddr("api")
	c := h1Client()
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		resp, err := c.Get(url + "/slow")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	eventually(t, 5*time.Second, "A in flight", func() bool { return be.hits.Load() == 1 })
	br := s.Cluster("api").breaker()
	ctx, cancel := context.WithCancel(context.Background())
	bDone := make(chan struct{})
	go func() {
		defer close(bDone)
		req, _ := http.NewRequestWithContext(ctx, "GET", url+"/b", nil)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	eventually(t, 5*time.Second, "B's dial waiting as pending", func() bool { return br.Stats().PendingRequests.Active == 1 })
	cancel() // the client gives up on B
	<-bDone
	close(release) // A ends; its connection goes back to the idle pool
	<-aDone
	eventually(t, 10*time.Second, "pending slot released", func() bool { return br.Stats().PendingRequests.Active == 0 })
	resp, body := get(t, c, url+"/")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after: %d %q", resp.StatusCode, body)
	}
}
