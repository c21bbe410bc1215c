package sidecar

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestProbeDefault(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"wildcard inbound gets the probe", "service: {name: web, port: 8080, inbound: 0.0.0.0:15006}", DefaultProbe},
		{"IPv6 wildcard inbound", "service: {name: web, port: 8080, inbound: '[::]:15006'}", DefaultProbe},
		{"pod address inbound", "service: {name: web, port: 8080, inbound: 198.18.0.5:15006}", DefaultProbe},
		{"loopback inbound: none, several sidecars share the host", "service: {name: web, port: 8080, inbound: 127.0.0.1:15006}", ""},
		{"localhost inbound: none", "service: {name: web, port: 8080, inbound: localhost:15006}", ""},
		{"no inbound: none", "service: {name: web, port: 8080}", ""},
		{"no service: none", "node: a", ""},
		{"off stays off", "probe: off\nservice: {name: web, port: 8080, inbound: 0.0.0.0:15006}", ProbeOff},
		{"explicit", "probe: 127.0.0.1:0\nservice: {name: web, port: 8080, inbound: 127.0.0.1:15006}", "127.0.0.1:0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("test.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Probe != tc.want {
				t.Errorf("probe = %q, want %q", cfg.Probe, tc.want)
			}
		})
	}
}

func TestServiceAddressConfigErrors(t *testing.T) {
	cases := []struct{ yaml, want string }{
		{"service: {name: web, port: 8080, address: pod-1}", `service.address: "pod-1" is not an IP address`},
		{"service: {name: web, port: 8080, deregister_critical_after: -1s}", `service.deregister_critical_after: "-1s" must be >= 0`},
		{"probe: nowhere", `probe: "nowhere" is not host:port`},
	}
	for _, tc := range cases {
		_, err := Parse("test.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v; want an error containing %q", tc.yaml, err, tc.want)
		}
	}
	cfg, err := Parse("test.yaml", []byte("service: {name: web, port: 8080, address: '2001:2::5'}"))
	if err != nil {
		t.Fatal(err)
	}
	if d := *cfg.Service.DeregisterCriticalAfter; d != time.Minute {
		t.Errorf("deregister_critical_after default = %v, want 1m", d)
	}
}

// The probe listener answers GET /ready and GET /metrics only; /ready there
// follows the app's own health check, which the sidecar runs.
func TestProbeServesReadOnlyAndFollowsAppHealth(t *testing.T) {
	var healthy atomic.Bool
	app := startBackend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && !healthy.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	_, port, _ := strings.Cut(app.addr, ":")
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
probe: 127.0.0.1:0
service:
  name: web
  port: `+port+`
  inbound: 127.0.0.1:0
  health_check: {http: /healthz, interval: 20ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1}
`, "services: {}\n")
	c := h1Client()
	base := "http://" + s.ProbeAddr()
	ready := func() (int, string) {
		resp, body := get(t, c, base+"/ready")
		return resp.StatusCode, strings.TrimSpace(body)
	}
	eventually(t, 10*time.Second, "/ready is 503 while the app fails its check", func() bool {
		code, body := ready()
		return code == 503 && body == "local app failing its health check"
	})
	// Requests still reach the app through the inbound listener meanwhile.
	if resp, _ := get(t, c, "http://"+s.InboundAddr()+"/"); resp.StatusCode != 200 {
		t.Errorf("inbound while the app fails its check: %d, want 200", resp.StatusCode)
	}
	healthy.Store(true)
	eventually(t, 10*time.Second, "/ready turns 200 once the app passes", func() bool {
		code, _ := ready()
		return code == 200
	})
	if resp, body := get(t, c, base+"/metrics"); resp.StatusCode != 200 || !strings.Contains(body, "sidemesh_") {
		t.Errorf("probe /metrics: %d", resp.StatusCode)
	}
	for _, path := range []string{"/clusters", "/config_dump"} {
		if resp, _ := get(t, c, base+path); resp.StatusCode != http.StatusNotFound {
			t.Errorf("probe GET %s: %d, want 404", path, resp.StatusCode)
		}
	}
	for _, path := range []string{"/quitquitquit", "/drain_listeners", "/ready"} {
		resp, err := c.Post(base+path, "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("probe POST %s: %d, want a refusal", path, resp.StatusCode)
		}
	}
	select {
	case <-s.Quit():
		t.Fatal("POST /quitquitquit on the probe listener stopped the sidecar")
	default:
	}
}
