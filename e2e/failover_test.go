package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// The failover end-to-end tests: two Consul server agents, dc1 and dc2,
// WAN-joined on loopback, the api service registered in both, and
// `sidemesh run` against dc1's agent.

// failoverView is the part of /clusters about priorities and datacenters.
type failoverView struct {
	Name           string `json:"name"`
	Panic          bool   `json:"panic_mode"`
	DiscoveryError string `json:"discovery_error"`
	Priorities     []struct {
		Priority     uint32  `json:"priority"`
		HealthyHosts int     `json:"healthy_hosts"`
		TotalHosts   int     `json:"total_hosts"`
		LoadPercent  float64 `json:"load_percent"`
	} `json:"priorities"`
	Datacenters []struct {
		Datacenter string `json:"datacenter"`
		Priority   int    `json:"priority"`
		Endpoints  int    `json:"endpoints"`
		Error      string `json:"error"`
	} `json:"datacenters"`
}

func (s *Sidecar) failover(t testing.TB, name string) failoverView {
	t.Helper()
	_, body := s.Get(t, "/clusters")
	var v struct {
		Clusters []failoverView `json:"clusters"`
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("/clusters: %v: %s", err, body)
	}
	for _, c := range v.Clusters {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("/clusters has no %q: %s", name, body)
	return failoverView{}
}

// waitLoads waits until /clusters shows, per priority, healthy/total hosts
// and the load in percent.
func waitLoads(t testing.TB, s *Sidecar, within time.Duration, what string, want ...[3]float64) {
	t.Helper()
	testenv.Eventually(t, within, what, func() error {
		v := s.failover(t, "api")
		if len(v.Priorities) != len(want) {
			return fmt.Errorf("priorities %+v", v.Priorities)
		}
		for i, w := range want {
			p := v.Priorities[i]
			if float64(p.HealthyHosts) != w[0] || float64(p.TotalHosts) != w[1] || math.Abs(p.LoadPercent-w[2]) > 1e-6 {
				return fmt.Errorf("priorities %+v", v.Priorities)
			}
		}
		return nil
	})
}

// twoDatacenters starts dc1 and dc2 and registers two api instances in
// each, with TTL checks passing; it returns the agents and the backends.
func twoDatacenters(t *testing.T) (dc1, dc2 *testenv.Consul, c1, c2 *api.Client, a, b []*Backend) {
	dc1 = testenv.StartConsul(t)
	dc2 = testenv.StartConsul(t, testenv.ConsulDatacenter("dc2"), testenv.ConsulJoinWAN(dc1))
	c1, c2 = dc1.Client(t), dc2.Client(t)
	for i := range 2 {
		a = append(a, startBackend(t, fmt.Sprintf("dc1-%d", i), nil))
		consulRegister(t, c1, "api", fmt.Sprintf("api-dc1-%d", i), a[i], api.AgentWeights{Passing: 1, Warning: 1},
			&api.AgentServiceCheck{CheckID: fmt.Sprintf("ttl-dc1-%d", i), TTL: "10m", Status: api.HealthPassing})
		b = append(b, startBackend(t, fmt.Sprintf("dc2-%d", i), nil))
		consulRegister(t, c2, "api", fmt.Sprintf("api-dc2-%d", i), b[i], api.AgentWeights{Passing: 1, Warning: 1},
			&api.AgentServiceCheck{CheckID: fmt.Sprintf("ttl-dc2-%d", i), TTL: "10m", Status: api.HealthPassing})
	}
	return
}

func setTTL(t *testing.T, c *api.Client, id, status string) {
	t.Helper()
	if err := c.Agent().UpdateTTL(id, "", status); err != nil {
		t.Fatalf("ttl %s %s: %v", id, status, err)
	}
}

// loader sends GETs through the sidecar until stopped and counts failures
// (errors or non-200): the traffic that runs through a failover.
type loader struct {
	stop   context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	sent   int
	failed []string
}

func startLoader(url string, c int) *loader {
	ctx, cancel := context.WithCancel(context.Background())
	l := &loader{stop: cancel}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c}, Timeout: 10 * time.Second}
	for range c {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for ctx.Err() == nil {
				code, _, _, err := consulGet(client, url)
				l.mu.Lock()
				l.sent++
				if err != nil || code != 200 {
					l.failed = append(l.failed, fmt.Sprintf("%d %v", code, err))
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *loader) finish() (int, []string) {
	l.stop()
	l.wg.Wait()
	return l.sent, l.failed
}

func dcShares(counts map[string]int) (dc1, dc2 float64) {
	n := 0
	for name, c := range counts {
		n += c
		if strings.HasPrefix(name, "dc1-") {
			dc1 += float64(c)
		} else {
			dc2 += float64(c)
		}
	}
	return 100 * dc1 / float64(n), 100 * dc2 / float64(n)
}

// failoverScenario runs the failover steps against a sidecar whose api
// upstream has dc2 as its failover datacenter (from its file or from
// Consul's service-resolver entry).
func failoverScenario(t *testing.T, sc *Sidecar, up string, c1 *api.Client) {
	waitLoads(t, sc, 20*time.Second, "both datacenters seen, dc1 takes all", [3]float64{2, 2, 100}, [3]float64{2, 2, 0})
	counts, failed := load(t, "http://"+up+"/", 200, 4)
	if failed != 0 || counts["dc2-0"]+counts["dc2-1"] != 0 {
		t.Fatalf("all healthy: %v, %d failed; want everything on dc1", counts, failed)
	}

	// Half of dc1 healthy: dc1 keeps 1.4 × 50 % = 70 %.
	setTTL(t, c1, "ttl-dc1-1", api.HealthCritical)
	waitLoads(t, sc, 10*time.Second, "half of dc1 healthy: 70/30", [3]float64{1, 2, 70}, [3]float64{2, 2, 30})
	counts, failed = load(t, "http://"+up+"/", consulLoadN, consulLoadC)
	d1, d2 := dcShares(counts)
	t.Logf("half of dc1 healthy: dc1 %.1f %%, dc2 %.1f %% over %d requests (%v)", d1, d2, consulLoadN, counts)
	if failed != 0 || math.Abs(d1-70) > consulShareTolerance || counts["dc1-1"] != 0 {
		t.Errorf("half of dc1 healthy: dc1 %.1f %% (want 70 ± %.0f), %d failed, %d on the critical instance", d1, consulShareTolerance, failed, counts["dc1-1"])
	}

	// All of dc1 critical, under load: traffic moves to dc2 with no failed request.
	l := startLoader("http://"+up+"/", 4)
	start := time.Now()
	setTTL(t, c1, "ttl-dc1-0", api.HealthCritical)
	waitLoads(t, sc, 10*time.Second, "dc1 down: dc2 takes all", [3]float64{0, 2, 0}, [3]float64{2, 2, 100})
	t.Logf("failover to dc2 seen in /clusters after %v", time.Since(start).Round(time.Millisecond))
	sent, fails := l.finish()
	if len(fails) != 0 {
		t.Errorf("%d of %d requests failed during the failover: %v", len(fails), sent, fails[:min(len(fails), 5)])
	}
	counts, failed = load(t, "http://"+up+"/", 200, 4)
	if failed != 0 || counts["dc1-0"]+counts["dc1-1"] != 0 {
		t.Errorf("dc1 down: %v, %d failed; want everything on dc2", counts, failed)
	}
	if v := sc.failover(t, "api"); v.Panic {
		t.Error("panic mode with a healthy failover datacenter")
	}

	// dc1 back: traffic returns.
	setTTL(t, c1, "ttl-dc1-0", api.HealthPassing)
	setTTL(t, c1, "ttl-dc1-1", api.HealthPassing)
	waitLoads(t, sc, 10*time.Second, "dc1 back", [3]float64{2, 2, 100}, [3]float64{2, 2, 0})
	counts, failed = load(t, "http://"+up+"/", 200, 4)
	if failed != 0 || counts["dc2-0"]+counts["dc2-1"] != 0 {
		t.Errorf("dc1 back: %v, %d failed; want everything on dc1", counts, failed)
	}
}

func TestConsulFailoverDatacenters(t *testing.T) {
	dc1, dc2, c1, _, _, _ := twoDatacenters(t)
	up := freeAddr(t)
	sc := startSidecar(t, "sidecar", fmt.Sprintf(`node: failover-1
discovery:
  consul: {address: %s, wait_time: 30s}
upstreams:
  - service: api
    listen: %s
    lb_policy: round_robin
    failover: {datacenters: [dc2]}
`, dc1.Addr(), up), true)
	failoverScenario(t, sc, up, c1)

	// dc2's agent stops: dc1 keeps serving, the error shows in /clusters.
	dc2.Stop()
	testenv.Eventually(t, 30*time.Second, "dc2's error in /clusters", func() error {
		v := sc.failover(t, "api")
		if len(v.Datacenters) != 2 || v.Datacenters[1].Datacenter != "dc2" || v.Datacenters[1].Error == "" {
			return fmt.Errorf("datacenters %+v", v.Datacenters)
		}
		return nil
	})
	t.Logf("dc2 down: %+v", sc.failover(t, "api").Datacenters)
	counts, failed := load(t, "http://"+up+"/", 200, 4)
	if failed != 0 || counts["dc1-0"]+counts["dc1-1"] != 200 {
		t.Errorf("dc2 down: %v, %d failed; want dc1 to serve everything", counts, failed)
	}
	if sc.Exited() {
		t.Fatal("the sidecar exited when dc2 went away")
	}
}

// The same failover, set only in Consul's service-resolver entry, and a
// change of the entry followed without a restart.
func TestConsulFailoverFromServiceResolver(t *testing.T) {
	dc1, _, c1, _, _, _ := twoDatacenters(t)
	entry := &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api",
		Failover: map[string]api.ServiceResolverFailover{"*": {Datacenters: []string{"dc2"}}}}
	if _, _, err := c1.ConfigEntries().Set(entry, nil); err != nil {
		t.Fatalf("service-resolver: %v", err)
	}
	up := freeAddr(t)
	sc := startSidecar(t, "sidecar", fmt.Sprintf(`node: failover-2
discovery:
  consul: {address: %s, wait_time: 30s}
upstreams:
  - service: api
    listen: %s
    lb_policy: round_robin
`, dc1.Addr(), up), true)
	failoverScenario(t, sc, up, c1)

	// The entry loses its failover: dc2 leaves the upstream.
	if _, err := c1.ConfigEntries().Delete(api.ServiceResolver, "api", nil); err != nil {
		t.Fatal(err)
	}
	waitLoads(t, sc, 10*time.Second, "entry deleted: dc1 only", [3]float64{2, 2, 100})
	// And comes back.
	if _, _, err := c1.ConfigEntries().Set(entry, nil); err != nil {
		t.Fatal(err)
	}
	waitLoads(t, sc, 10*time.Second, "entry back: dc2 again", [3]float64{2, 2, 100}, [3]float64{2, 2, 0})
}

// Failover datacenters Consul does not know are a config error naming the
// key.
func TestConsulFailoverUnknownDatacenter(t *testing.T) {
	dc1, _, _, _, _, _ := twoDatacenters(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`admin: %s
discovery:
  consul: {address: %s}
upstreams:
  - service: api
    listen: %s
    failover: {datacenters: [dc2, dc9]}
`, freeAddr(t), dc1.Addr(), freeAddr(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, sidemeshBin(t), "run", "-c", cfg).CombinedOutput()
	if err == nil {
		t.Fatalf("sidemesh run accepted an unknown datacenter:\n%s", out)
	}
	if want := `upstreams[0].failover.datacenters[1]: "dc9" is not a datacenter Consul knows`; !strings.Contains(string(out), want) {
		t.Fatalf("output lacks %q:\n%s", want, out)
	}
}

// writePriorities writes the endpoints file of service api: addresses by
// priority level.
func writePriorities(t *testing.T, path string, levels ...[]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("services:\n  api:\n")
	for prio, addrs := range levels {
		for _, a := range addrs {
			fmt.Fprintf(&b, "    - {address: %s, priority: %d}\n", a, prio)
		}
	}
	if err := os.WriteFile(path+".tmp", []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// A sidecar fed over xDS keeps the priorities of the control plane's
// endpoints file: priority 1 serves only once every priority-0 endpoint
// fails its health checks.
func TestXDSPriorities(t *testing.T) {
	var sick atomic.Bool
	h := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && sick.Load() {
			http.Error(w, "sick", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "ok")
	}
	p0 := []*Backend{startBackend(t, "p0-a", h), startBackend(t, "p0-b", h)}
	p1 := startBackend(t, "p1", nil)
	ups := []xdsUpstream{{service: "api"}}
	cp := startXDSControlPlane(t, "standalone", ups, xdsEPs{"api": {{addr: p1.Addr, weight: 1}}})
	writePriorities(t, cp.EPFile, []string{p0[0].Addr, p0[1].Addr}, []string{p1.Addr})
	sc, listen := startXDSClient(t, "xds-prio", cp.Addr, []xdsUpstream{{service: "api",
		keys: []string{"lb_policy: round_robin", "health_check: {http: {path: /healthz}, interval: 200ms, no_traffic_interval: 200ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1}"}}})
	url := "http://" + listen["api"] + "/"
	waitLoads(t, sc, 20*time.Second, "priority 0 takes all", [3]float64{2, 2, 100}, [3]float64{1, 1, 0})
	counts, failed := load(t, url, 200, 4)
	if failed != 0 || counts["p1"] != 0 {
		t.Fatalf("priority 0 healthy: %v, %d failed; want nothing on priority 1", counts, failed)
	}
	sick.Store(true)
	waitLoads(t, sc, 10*time.Second, "priority 0 unhealthy: priority 1 takes all", [3]float64{0, 2, 0}, [3]float64{1, 1, 100})
	counts, failed = load(t, url, 200, 4)
	if failed != 0 || counts["p1"] != 200 {
		t.Fatalf("priority 0 unhealthy: %v, %d failed; want everything on priority 1", counts, failed)
	}
	sick.Store(false)
	waitLoads(t, sc, 10*time.Second, "priority 0 back", [3]float64{2, 2, 100}, [3]float64{1, 1, 0})
}

// Zone-aware routing end to end: the sidecar in zone a, its own service
// web spread evenly over a, b and c, the api endpoints 1/2/3 over a/b/c.
// Envoy's algorithm keeps (1/6)/(1/3) = 50 % in zone a and spills the
// rest to c, the only zone with spare capacity (b has exactly its share).
func TestZoneAwareSplit(t *testing.T) {
	var b strings.Builder
	b.WriteString("services:\n  web:\n")
	for i, z := range []string{"a", "b", "c"} {
		fmt.Fprintf(&b, "    - {address: 127.0.0.1:%d, zone: %s}\n", 1001+i, z)
	}
	b.WriteString("  api:\n")
	zoneOf := map[string]string{}
	for i, z := range []string{"a", "b", "b", "c", "c", "c"} {
		be := startBackend(t, fmt.Sprintf("api-%d", i), nil)
		zoneOf[be.Name] = z
		fmt.Fprintf(&b, "    - {address: %s, zone: %s}\n", be.Addr, z)
	}
	epFile := filepath.Join(t.TempDir(), "endpoints.yaml")
	if err := os.WriteFile(epFile, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	up := freeAddr(t)
	sc := startSidecar(t, "zone-a", fmt.Sprintf(`node: zone-a-1
zone: a
service: {name: web, port: 1001}
discovery: {file: %s}
upstreams:
  - service: api
    listen: %s
    lb_policy: round_robin
    zone_aware: true
`, epFile, up), true)
	testenv.Eventually(t, 10*time.Second, "zone routing in /clusters", func() error {
		_, body := sc.Get(t, "/clusters")
		if !strings.Contains(body, `"state": "spill"`) {
			return fmt.Errorf("no spill state yet: %s", body)
		}
		return nil
	})
	counts, failed := load(t, "http://"+up+"/", consulLoadN, consulLoadC)
	byZone := map[string]int{}
	for name, n := range counts {
		byZone[zoneOf[name]] += n
	}
	a := 100 * float64(byZone["a"]) / consulLoadN
	t.Logf("zone a sidecar: by zone %v over %d requests (a %.1f %%)", byZone, consulLoadN, a)
	if failed != 0 || byZone["b"] != 0 || math.Abs(a-50) > consulShareTolerance {
		t.Errorf("by zone %v, %d failed: want a 50 ± %.0f %%, c the rest, b none", byZone, failed, consulShareTolerance)
	}
}
