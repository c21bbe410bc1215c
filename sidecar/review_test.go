package sidecar

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/health"
	"github.com/sidemesh/sidemesh/xds"
)

// startSidecarNoCleanup is startSidecar without the Shutdown cleanup, for
// tests whose subject is Shutdown itself (a hung Shutdown must fail the
// test, not hang its cleanup).
func startSidecarNoCleanup(t *testing.T, cfgYAML, endpoints string) *Sidecar {
	t.Helper()
	dir := t.TempDir()
	ep := filepath.Join(dir, "endpoints.yaml")
	writeFile(t, ep, endpoints)
	cfg, err := Parse("test.yaml", []byte(strings.ReplaceAll(cfgYAML, "{{EP}}", ep)))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// shutdownWithin fails the test when Shutdown does not return in d.
func shutdownWithin(t *testing.T, s *Sidecar, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("Shutdown did not return within %v", d)
	}
}

// A 101 Switching Protocols answer (WebSocket) is relayed, and the request's
// accounting (breaker slot, rq_active, host active) ends when the upgraded
// connection ends. It used to be answered 502 by ReverseProxy (the wrapped
// body was not writable) with every counter leaked for good.
func TestUpgradeRelayedAndAccounted(t *testing.T) {
	be := startBackend(t, "ws", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want upgrade", 400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(conn, brw) // echo until the client closes
	})
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - {service: api, listen: 127.0.0.1:0}
`, endpointsYAML("api", be.addr, 1))
	for i := 0; i < 3; i++ {
		conn, err := net.Dial("tcp", s.UpstreamAddr("api"))
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			body, _ := io.ReadAll(resp.Body)
			t.Fatalf("upgrade answered %d %q", resp.StatusCode, body)
		}
		_, _ = conn.Write([]byte("ping\n"))
		line, err := br.ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("echo over the upgraded connection: %q %v", line, err)
		}
		conn.Close()
	}
	c := s.Cluster("api")
	eventually(t, 5*time.Second, "upgrade accounting released", func() bool {
		st := c.Status()
		return c.breaker().Stats().Requests.Active == 0 && len(st.Endpoints) == 1 && st.Endpoints[0].RqActive == 0
	})
}

// A 101 whose Upgrade does not match the request's is refused and its
// accounting released (ReverseProxy answers such a response without ever
// closing its body).
func TestMismatchedUpgradeReleased(t *testing.T) {
	be := startBackend(t, "ws", func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(io.Discard, brw)
	})
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - {service: api, listen: 127.0.0.1:0}
`, endpointsYAML("api", be.addr, 1))
	conn, err := net.Dial("tcp", s.UpstreamAddr("api"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		t.Fatalf("mismatched upgrade relayed")
	}
	c := s.Cluster("api")
	eventually(t, 5*time.Second, "accounting released", func() bool {
		st := c.Status()
		return c.breaker().Stats().Requests.Active == 0 && st.Endpoints[0].RqActive == 0
	})
}

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

// Shutdown with a TCP inbound listener returns (it used to wait for ever on
// the inbound accept loop, whose listener nobody closed).
func TestShutdownTCPInbound(t *testing.T) {
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	port := app.Addr().(*net.TCPAddr).Port
	s := startSidecarNoCleanup(t, fmt.Sprintf(`
admin: 127.0.0.1:0
service: {name: web, port: %d, inbound: 127.0.0.1:0, protocol: tcp}
`, port), "services: {}\n")
	addr := s.InboundAddr()
	shutdownWithin(t, s, 10*time.Second)
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("inbound listener still accepting after Shutdown")
	}
}

// Shutdown with a TCP connection open through the transparent listener
// returns. The transparent listener waited for its connections before the
// TCP proxies were told to close them, so a long-lived connection (a
// database client) hung Shutdown for ever.
//
// Without iptables the original destination is the listener's own address,
// so the TCP upstream owning it points back at the listener; max_connections
// 1 stops the loop after one hop.
func TestShutdownTransparentTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := startSidecarNoCleanup(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
transparent: {listen: `+addr+`}
upstreams:
  - {service: db, protocol: tcp, circuit_breakers: {max_connections: 1}, outlier_detection: {consecutive_local_origin_failure: 1000, consecutive_5xx: 1000}}
`, endpointsYAML("db", addr, 1))
	conn, err := net.Dial("tcp", s.TransparentAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = conn.Write([]byte("\x00binary")) // the client keeps its side open
	eventually(t, 5*time.Second, "relay established", func() bool {
		return s.Cluster("db").breaker().Stats().Connections.Active == 1
	})
	shutdownWithin(t, s, 10*time.Second)
}

// CDS settings that change one key (here the lb policy) leave the health
// checker, and so the hosts' verdicts, alone. Every change used to rebuild
// checker and detector, making every host unhealthy until checked again and
// forgetting every ejection. Settings arriving after close start nothing.
func TestCDSChangeKeepsHealthState(t *testing.T) {
	be := startBackend(t, "api", nil)
	u := &Upstream{Service: "api"}
	u.SetDefaults()
	c := newCluster(u, newMetrics(), nil, slog.New(slog.DiscardHandler))
	c.start(nil)
	snap, err := discovery.NewSnapshot("api", 1, []discovery.Endpoint{{Address: be.addr, Weight: 1}})
	if err != nil {
		t.Fatal(err)
	}
	c.onUpdate(snap)
	cs := xds.Defaults("api").Settings
	cs.HealthCheck = &health.Config{HTTP: &health.HTTPCheck{Path: "/"}, Interval: 20 * time.Millisecond, Timeout: time.Second,
		UnhealthyThreshold: 1, HealthyThreshold: 1, NoTrafficInterval: 20 * time.Millisecond}
	c.applySettings(cs)
	hostHealth := func() string { return c.Status().Endpoints[0].Health }
	eventually(t, 5*time.Second, "host healthy", func() bool { return hostHealth() == "healthy" })
	c.mu.Lock()
	hc := c.hc
	c.mu.Unlock()
	cs2 := cs
	cs2.LBPolicy = "least_request"
	c.applySettings(cs2)
	if got := hostHealth(); got != "healthy" {
		t.Fatalf("after an lb_policy change the host is %q", got)
	}
	c.mu.Lock()
	same := c.hc == hc
	c.mu.Unlock()
	if !same {
		t.Fatalf("health checker rebuilt for an lb_policy change")
	}
	c.close()
	cs3 := cs2
	cs3.HealthCheck = &health.Config{HTTP: &health.HTTPCheck{Path: "/other"}, Interval: time.Second, Timeout: time.Second,
		UnhealthyThreshold: 1, HealthyThreshold: 1}
	c.applySettings(cs3)
	c.mu.Lock()
	same = c.hc == hc
	c.mu.Unlock()
	if !same {
		t.Fatalf("settings applied after close started a new health checker")
	}
}

// LB options from CDS that the picker refuses are ignored; they used to be
// adopted, after which every rebuild failed and endpoint updates never
// reached the request path.
func TestBadCDSLBOptionsIgnored(t *testing.T) {
	u := &Upstream{Service: "api"}
	u.SetDefaults()
	c := newCluster(u, newMetrics(), nil, slog.New(slog.DiscardHandler))
	c.start(nil)
	defer c.close()
	snap, _ := discovery.NewSnapshot("api", 1, []discovery.Endpoint{{Address: "127.0.0.1:1", Weight: 1}})
	c.onUpdate(snap)
	cs := xds.Defaults("api").Settings
	cs.LBPolicy = "least_request"
	bias := -1.0
	cs.LB.LeastRequest.ActiveRequestBias = &bias
	c.applySettings(cs)
	snap2, _ := discovery.NewSnapshot("api", 2, []discovery.Endpoint{{Address: "127.0.0.1:1", Weight: 1}, {Address: "127.0.0.1:2", Weight: 1}})
	c.onUpdate(snap2)
	if n := len(c.state.Load().hosts); n != 2 {
		t.Fatalf("picker has %d hosts after the update, want 2", n)
	}
	if got := c.policyName(); got != "least_request" {
		t.Fatalf("policy %q, want least_request (the valid keys still apply)", got)
	}
}
