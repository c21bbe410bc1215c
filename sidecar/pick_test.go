package sidecar

import (
	"errors"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
)

// The breaker counts an attempt in before the pick and out in Done; Done
// also ends the host's active count, counts the status class and errors,
// and feeds outlier detection; a refused or failed pick holds nothing.
func TestPickDoneFeedback(t *testing.T) {
	be := startBackend(t, "b", nil)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    circuit_breakers: {max_requests: 1, max_retries: 1}
    outlier_detection: {consecutive_5xx: 2, interval: 1h}
`, endpointsYAML("api", be.addr, 1))
	c := s.Cluster("api")
	br := c.breaker()
	g := c.guarded()
	info := &balancer.PickInfo{}
	if err := g.acquireRetry(); err != nil {
		t.Fatal(err)
	}
	p, err := g.pick(info, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	h := p.Host
	if st := br.Stats(); st.Requests.Active != 1 || st.Retries.Active != 1 || h.Active.Load() != 1 || h.RqTotal.Load() != 1 {
		t.Fatalf("during the attempt: breaker %+v, host active %d total %d", st, h.Active.Load(), h.RqTotal.Load())
	}
	// max_requests 1: a second attempt is refused, and gives back the
	// retry slot it was handed.
	if err := g.acquireRetry(); err == nil {
		t.Fatal("second retry slot granted with max_retries 1")
	}
	if _, err := g.pick(info, nil, false); !errors.Is(err, breaker.ErrOverflow) {
		t.Fatalf("pick over max_requests: %v, want an overflow", err)
	}
	p.Done(DoneInfo{Status: 503, Outlier: outlier.Status(503), Latency: time.Millisecond})
	if st := br.Stats(); st.Requests.Active != 0 || st.Retries.Active != 0 || h.Active.Load() != 0 || h.RqError.Load() != 1 {
		t.Fatalf("after Done: breaker %+v, host active %d errors %d", st, h.Active.Load(), h.RqError.Load())
	}
	// A second 5xx through Done ejects (consecutive_5xx: 2).
	p, err = g.pick(info, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	p.Done(DoneInfo{Status: 502, Outlier: outlier.Status(502)})
	if !h.outlier().Ejected() {
		t.Fatal("two 5xx reported through Done did not eject the host")
	}
	// Failures the endpoint is not to blame for count no error.
	before := h.RqError.Load()
	for _, k := range []failKind{failCanceled, failOverflow} {
		p, err = c.pick(info, nil)
		if err != nil {
			t.Fatal(err)
		}
		p.Done(DoneInfo{Fail: k})
	}
	if h.RqError.Load() != before || h.Active.Load() != 0 {
		t.Fatalf("canceled/overflow attempts: errors %d → %d, active %d", before, h.RqError.Load(), h.Active.Load())
	}
}
