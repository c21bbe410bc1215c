package sidecar

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/upstream"
	"github.com/sidemesh/sidemesh/xds"
)

// fromCDS is what the xDS client hands a cluster for u: the settings
// translated to an Envoy Cluster by the server and decoded back.
func fromCDS(t *testing.T, u xds.Upstream) upstream.Settings {
	t.Helper()
	d, err := xds.DecodeCluster(xds.Cluster(u))
	if err != nil {
		t.Fatal(err)
	}
	return d.Settings
}

// hash_policy applies under the effective lb_policy: when the file leaves
// lb_policy out and the control plane sets ring_hash, requests with the
// same hash header go to one endpoint. The proxy used to look at the
// file's lb_policy (round_robin by default) and never hashed.
func TestHashPolicyFollowsCDSPolicy(t *testing.T) {
	var bs []*backend
	var eps []any
	for i := range 4 {
		b := startBackend(t, fmt.Sprint("b", i), nil)
		bs = append(bs, b)
		eps = append(eps, b.addr, 1)
	}
	s, _ := startSidecar(t, oneUpstream+"    hash_policy: [{header: x-user}]\n", endpointsYAML("api", eps...))
	c := h1Client()
	spread := func() int {
		before := make([]int64, len(bs))
		for i, b := range bs {
			before[i] = b.hits.Load()
		}
		for range 40 {
			if resp, _ := get(t, c, "http://"+s.UpstreamAddr("api")+"/", "X-User", "alice"); resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
		}
		n := 0
		for i, b := range bs {
			if b.hits.Load() > before[i] {
				n++
			}
		}
		return n
	}
	if n := spread(); n != 4 {
		t.Fatalf("round_robin: 40 requests reached %d endpoints, want 4", n)
	}
	s.Cluster("api").applySettings(fromCDS(t, xds.Upstream{Service: "api", Settings: upstream.Settings{LBPolicy: balancer.RingHash}}))
	if got := s.Cluster("api").policyName(); got != balancer.RingHash {
		t.Fatalf("policy %q after CDS, want ring_hash", got)
	}
	if n := spread(); n != 1 {
		t.Errorf("ring_hash from CDS: 40 requests with one X-User reached %d endpoints, want 1", n)
	}
}

// maglev's table_size from CDS sets the table the picker uses.
func TestCDSMaglevTableSizeApplied(t *testing.T) {
	u := &Upstream{Service: "api"}
	u.SetDefaults()
	c := newCluster(u, newMetrics(), nil, slog.New(slog.DiscardHandler))
	c.start(nil)
	defer c.close()
	var eps []discovery.Endpoint
	for i := range 5 {
		eps = append(eps, discovery.Endpoint{Address: fmt.Sprintf("127.0.0.%d:80", i+1), Weight: 1})
	}
	snap, err := discovery.NewSnapshot("api", 1, eps)
	if err != nil {
		t.Fatal(err)
	}
	c.onUpdate(snap)
	c.applySettings(fromCDS(t, xds.Upstream{Service: "api", Settings: upstream.Settings{LBPolicy: balancer.Maglev,
		LB: balancer.Config{Maglev: balancer.MaglevConfig{TableSize: 7}}}}))
	st := &c.state.Load().levels[0]
	beps := make([]balancer.Endpoint, len(st.hosts))
	for i, h := range st.hosts {
		beps[i] = balancer.Endpoint{Address: h.Addr, Weight: 1}
	}
	want := func(size uint64) balancer.Picker {
		p, err := balancer.New(balancer.Maglev, balancer.Config{Maglev: balancer.MaglevConfig{TableSize: size}}, beps, 0)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	small, dflt := want(7), want(balancer.MaglevTableSize)
	differs := false
	for h := range uint64(2000) {
		info := &balancer.PickInfo{Hash: h * 0x9e3779b97f4a7c15, HasHash: true}
		got := st.picker.Pick(info)
		if w := small.Pick(info); got != w {
			t.Fatalf("hash %d: picked %d, the 7-entry table picks %d", info.Hash, got, w)
		}
		differs = differs || got != dflt.Pick(info)
	}
	if !differs {
		t.Fatal("the 7-entry table picks as the default table does: the test cannot tell them apart")
	}
}

// The merge rule per key: what the file sets wins, everything else comes
// from the control plane.
func TestCDSSettingsMergePerKey(t *testing.T) {
	cfg, err := Parse("m.yaml", []byte(`
discovery: {file: /dev/null}
upstreams:
  - service: api
    connect_timeout: 2s
    circuit_breakers: {max_requests: 7}
`))
	if err != nil {
		t.Fatal(err)
	}
	u := &cfg.Upstreams[0]
	c := newCluster(u, newMetrics(), nil, slog.New(slog.DiscardHandler))
	c.start(nil)
	defer c.close()
	remote := xds.Defaults("api")
	remote.Settings.ConnectTimeout = 9 * time.Second
	remote.Settings.LBPolicy = balancer.LeastRequest
	remote.Settings.HealthyPanicThreshold = new(0.0)
	remote.Settings.CircuitBreakers = &breaker.Config{MaxRequests: new(uint32(99))}
	c.applySettings(fromCDS(t, remote))
	if got := c.connectTimeout(); got != 2*time.Second {
		t.Errorf("connect_timeout %v, want the file's 2s", got)
	}
	if got := c.breaker().Stats().Requests.Limit; got != 7 {
		t.Errorf("max_requests %d, want the file's 7", got)
	}
	if got := c.policyName(); got != balancer.LeastRequest {
		t.Errorf("lb_policy %q, want the control plane's least_request", got)
	}
	c.mu.Lock()
	panicPct := c.panicPct
	c.mu.Unlock()
	if panicPct != 0 {
		t.Errorf("healthy_panic_threshold %v, want the control plane's 0", panicPct)
	}
}
