package sidecar

import (
	"log/slog"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/health"
	"github.com/sidemesh/sidemesh/xds"
)

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
	if n := c.state.Load().n; n != 2 {
		t.Fatalf("picker has %d hosts after the update, want 2", n)
	}
	if got := c.policyName(); got != "least_request" {
		t.Fatalf("policy %q, want least_request (the valid keys still apply)", got)
	}
}
