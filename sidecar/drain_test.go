package sidecar

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"
)

// The drain keeps the app's calls working: a request in flight at the
// start completes, the inbound answers Connection: close during its grace
// (HTTP/1) and GOAWAY (HTTP/2), outbound requests made after the inbound
// closed are served, and Shutdown returns once the outbound listener has
// been quiet for drain.quiet_period — not before, and not long after.
func TestDrainKeepsOutboundServing(t *testing.T) {
	release := make(chan struct{})
	slow := startBackend(t, "api", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		fmt.Fprint(w, "ok")
	})
	app := startBackend(t, "app", nil)
	_, appPort, _ := net.SplitHostPort(app.addr)
	const quiet = 700 * time.Millisecond
	s := startSidecarNoCleanup(t, fmt.Sprintf(`
admin: 127.0.0.1:0
service: {name: web, port: %s, inbound: 127.0.0.1:0}
discovery: {file: "{{EP}}"}
drain: {timeout: 60s, inbound_grace: 1s, quiet_period: %s}
upstreams:
  - {service: api, listen: 127.0.0.1:0}
`, appPort, quiet), endpointsYAML("api", slow.addr, 1))
	out := "http://" + s.UpstreamAddr("api")
	in := "http://" + s.InboundAddr()
	c := h1Client()

	inflight := make(chan error, 1)
	go func() {
		resp, err := c.Get(out + "/slow")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != 200 {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
		}
		inflight <- err
	}()
	eventually(t, 5*time.Second, "slow request reached the backend", func() bool { return slow.hits.Load() == 1 })

	drainStart := time.Now()
	done := make(chan time.Time, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		done <- time.Now()
	}()
	eventually(t, 5*time.Second, "draining", func() bool { return s.draining.Load() })
	if ok, why := s.Ready(); ok || why != "draining" {
		t.Fatalf("Ready() = %v %q during the drain", ok, why)
	}

	// The inbound grace: served, with Connection: close / GOAWAY.
	resp, _ := get(t, c, in+"/")
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("inbound during grace: status %d, Close %v (want 200 and Connection: close)", resp.StatusCode, resp.Close)
	}
	// HTTP/2: GOAWAY after the answer, so the next request needs a new
	// connection.
	h2 := h2cClient()
	var reused []bool
	for range 2 {
		req, _ := http.NewRequest("GET", in+"/", nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(ci httptrace.GotConnInfo) { reused = append(reused, ci.Reused) },
		}))
		resp, err := h2.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			t.Fatalf("inbound HTTP/2 during grace: %d %s", resp.StatusCode, resp.Proto)
		}
	}
	if len(reused) != 2 || reused[1] {
		t.Fatalf("HTTP/2 connection reused after the grace answer (GotConn reused %v): no GOAWAY", reused)
	}
	// Outbound still serves new requests during the grace.
	if resp, body := get(t, c, out+"/"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("outbound during grace: %d %q", resp.StatusCode, body)
	}
	// Once the grace is over the inbound closes...
	eventually(t, 10*time.Second, "inbound closed", func() bool {
		conn, err := net.DialTimeout("tcp", s.InboundAddr(), time.Second)
		if err == nil {
			conn.Close()
		}
		return err != nil
	})
	if d := time.Since(drainStart); d < time.Second {
		t.Fatalf("inbound closed %v into the drain, before its 1s grace", d)
	}
	// ...while the outbound keeps serving: the app's work at shutdown.
	for range 3 {
		if resp, body := get(t, c, out+"/"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("outbound after the inbound closed: %d %q", resp.StatusCode, body)
		}
	}
	select {
	case at := <-done:
		t.Fatalf("Shutdown returned %v into the drain with a request in flight", at.Sub(drainStart))
	default:
	}
	close(release)
	if err := <-inflight; err != nil {
		t.Fatalf("request in flight at the start of the drain: %v", err)
	}
	lastEnd := time.Now()
	var exited time.Time
	select {
	case exited = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Shutdown did not return 30s after the outbound went quiet")
	}
	if d := exited.Sub(lastEnd); d < quiet-50*time.Millisecond || d > quiet+time.Second {
		t.Fatalf("Shutdown returned %v after the last outbound request; want quiet_period %v (+1s)", d, quiet)
	}
	if conn, err := net.DialTimeout("tcp", s.UpstreamAddr("api"), time.Second); err == nil {
		conn.Close()
		t.Fatal("outbound listener still accepting after Shutdown")
	}
}

// With nothing in flight and no inbound, the drain ends after the quiet
// period, and at drain.timeout when the outbound never goes quiet.
func TestDrainTimeoutBoundsBusyOutbound(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	b := startBackend(t, "api", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	})
	s := startSidecarNoCleanup(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
drain: {timeout: 1500ms, inbound_grace: 0s, quiet_period: 100ms}
upstreams:
  - {service: api, listen: 127.0.0.1:0, timeout: 60s}
`, endpointsYAML("api", b.addr, 1))
	go func() {
		resp, err := h1Client().Get("http://" + s.UpstreamAddr("api") + "/")
		if err == nil {
			resp.Body.Close()
		}
	}()
	eventually(t, 5*time.Second, "request in flight", func() bool { return b.hits.Load() == 1 })
	start := time.Now()
	shutdownWithin(t, s, 20*time.Second)
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Fatalf("Shutdown returned after %v with a request in flight; want drain.timeout 1.5s", d)
	}
}

func TestDrainConfig(t *testing.T) {
	cfg, err := Parse("d.yaml", []byte("admin: 127.0.0.1:0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.Drain; d.Timeout != 30*time.Second || *d.InboundGrace != 2*time.Second || *d.QuietPeriod != time.Second {
		t.Fatalf("drain defaults = %+v", *d)
	}
	// Only a short timeout set: the grace shortens with it.
	cfg, err = Parse("d.yaml", []byte("drain: {timeout: 100ms}\n"))
	if err != nil || *cfg.Drain.InboundGrace != 100*time.Millisecond {
		t.Fatalf("drain.timeout 100ms alone: %v, grace %v", err, cfg.Drain.InboundGrace)
	}
	_, err = Parse("d.yaml", []byte("drain: {timeout: 1s, inbound_grace: 2s}\n"))
	if err == nil || !strings.Contains(err.Error(), "drain.inbound_grace") || !strings.Contains(err.Error(), "drain.timeout") {
		t.Fatalf("inbound_grace > timeout: err = %v", err)
	}
	_, err = Parse("d.yaml", []byte("drain: {quiet_period: -1s}\n"))
	if err == nil || !strings.Contains(err.Error(), "drain.quiet_period") {
		t.Fatalf("negative quiet_period: err = %v", err)
	}
}

// Validation errors name the line of their key, like decoding errors.
func TestValidationErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"node: x\ndrain: {timeout: 1s, inbound_grace: 2s}\n", "d.yaml: config: drain.inbound_grace: \"2s\" must not be longer than drain.timeout (1s) (line 2)"},
		{"node: x\ndiscovery: {file: e.yaml}\nupstreams:\n  - service: api\n    lb_policy: nope\n", "(line 5)"},
		{"node: x\nadmin:\n  address: nope\n", "d.yaml: config: admin.address: \"nope\" is not host:port (line 2)"}, // admin decodes itself: its own line
	} {
		_, err := Parse("d.yaml", []byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.doc, err, tc.want)
		}
	}
}
