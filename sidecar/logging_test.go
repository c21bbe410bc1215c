package sidecar

import (
	"context"
	"log/slog"
	"net"

	"strings"
	"sync"
	"testing"
	"time"
)

// attrHandler records every record's attributes, those added with With
// included, in order.
type attrHandler struct {
	mu    *sync.Mutex
	recs  *[][]slog.Attr
	attrs []slog.Attr
}

func newAttrHandler() *attrHandler {
	return &attrHandler{mu: &sync.Mutex{}, recs: &[][]slog.Attr{}}
}

func (h *attrHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *attrHandler) Handle(_ context.Context, r slog.Record) error {
	all := append([]slog.Attr(nil), h.attrs...)
	r.Attrs(func(a slog.Attr) bool { all = append(all, a); return true })
	all = append(all, slog.String("msg", r.Message))
	h.mu.Lock()
	*h.recs = append(*h.recs, all)
	h.mu.Unlock()
	return nil
}

func (h *attrHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &attrHandler{mu: h.mu, recs: h.recs, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *attrHandler) WithGroup(string) slog.Handler { return h }

// Every log line carries one component attribute: loggers derived for the
// clusters, outlier detection, health checks, TCP relays and the
// transparent listener do not repeat it.
func TestLogComponentOnce(t *testing.T) {
	h := newAttrHandler()
	be := startBackend(t, "b", always(503))
	tcp, _ := startEcho(t)
	s, _ := startSidecarWith(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
transparent: {listen: 127.0.0.1:0}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    outlier_detection: {consecutive_5xx: 2, interval: 50ms, base_ejection_time: 1s, max_ejection_percent: 100}
    health_check: {http: /healthz, interval: 50ms, no_traffic_interval: 50ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1}
  - {service: echo, listen: 127.0.0.1:0, protocol: tcp}
`, endpointsYAML("api", be.addr, 1)+endpointsYAML("echo", tcp, 1)[len("services:\n"):], Options{Logger: slog.New(h)})
	c := h1Client()
	for i := 0; i < 3; i++ {
		get(t, c, "http://"+s.UpstreamAddr("api")+"/")
	}
	get(t, c, "http://"+s.TransparentAddr()+"/", "Host", "nosuch")
	conn, err := net.Dial("tcp", s.UpstreamAddr("echo"))
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	eventually(t, 10*time.Second, "the health checker and the detector to log", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		seen := map[string]bool{}
		for _, rec := range *h.recs {
			for _, a := range rec {
				if a.Key == "component" {
					seen[a.Value.String()] = true
				}
			}
		}
		return seen["health"] && seen["outlier"] && seen["cluster"]
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, rec := range *h.recs {
		var comps []string
		for _, a := range rec {
			if a.Key == "component" {
				comps = append(comps, a.Value.String())
			}
		}
		if len(comps) > 1 {
			t.Errorf("log line with %d component attributes (%s): %v", len(comps), strings.Join(comps, ", "), rec)
		}
	}
}
