package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// The Consul end-to-end tests: a real `consul agent -dev`, real HTTP
// backends registered through the agent's HTTP API, and `sidemesh run`
// discovering them (and registering its own service) through
// discovery.consul.

// consulFollowBound is what the issue asks of a weight change in Consul:
// followed within 5 s.
const consulFollowBound = 5 * time.Second

// consulShareTolerance is the allowed distance, in share points, between an
// observed and an expected traffic share over consulLoadN requests. For
// weighted_random the worst case here is p = 0.2 … 0.7 over 3000 requests:
// σ ≤ 0.92 points, so 3 points is more than 3σ; round robin (EDF) is exact.
const (
	consulShareTolerance = 3.0
	consulLoadN          = 3000
	consulLoadC          = 8
)

// consulRegister registers b under service/id with the given weights and an
// optional check.
func consulRegister(t testing.TB, c *api.Client, service, id string, b *Backend, w api.AgentWeights, check *api.AgentServiceCheck) {
	t.Helper()
	host, port := consulSplit(t, b.Addr)
	reg := &api.AgentServiceRegistration{
		ID: id, Name: service, Address: host, Port: port,
		Weights: &w,
		Check:   check,
	}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("consul register %s/%s: %v", service, id, err)
	}
}

func consulSplit(t testing.TB, addr string) (string, int) {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	port, err := strconv.Atoi(addr[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("bad address %q", addr)
	}
	return addr[:i], port
}

// consulWaitWeights waits until /clusters shows exactly the endpoints in
// want (address → weight) for upstream, besides those Consul reports
// critical (listed as unhealthy, never picked).
func consulWaitWeights(t testing.TB, s *Sidecar, upstream string, want map[string]uint32, timeout time.Duration) {
	t.Helper()
	testenv.Eventually(t, timeout, "/clusters "+upstream+" shows weights "+fmt.Sprint(want), func() error {
		return consulWeightsMatch(t, s, upstream, want)
	})
}

func consulWeightsMatch(t testing.TB, s *Sidecar, upstream string, want map[string]uint32) error {
	cv := s.Cluster(t, upstream)
	got := map[string]uint32{}
	for _, ep := range cv.Endpoints {
		if ep.Health != "unhealthy" {
			got[ep.Address] = ep.Weight
		}
	}
	if len(got) != len(want) {
		return fmt.Errorf("endpoints %v", got)
	}
	for a, w := range want {
		if got[a] != w {
			return fmt.Errorf("endpoints %v", got)
		}
	}
	return nil
}

// consulCheckShares compares the observed shares (in points) with the
// weights and logs them.
func consulCheckShares(t testing.TB, label string, counts map[string]int, weights map[string]int) {
	t.Helper()
	total, wsum := 0, 0
	for _, n := range counts {
		total += n
	}
	for _, w := range weights {
		wsum += w
	}
	if total == 0 {
		t.Fatalf("%s: no successful requests", label)
	}
	names := make([]string, 0, len(weights))
	for n := range weights {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		got := 100 * float64(counts[n]) / float64(total)
		want := 100 * float64(weights[n]) / float64(wsum)
		fmt.Fprintf(&b, " %s(w=%d) %.1f%% (want %.1f%%);", n, weights[n], got, want)
		if math.Abs(got-want) > consulShareTolerance {
			t.Errorf("%s: %s got %.2f%% of %d requests, want %.2f%% ± %.0f points", label, n, got, total, want, consulShareTolerance)
		}
	}
	for n, c := range counts {
		if _, ok := weights[n]; !ok {
			t.Errorf("%s: %d requests went to %q, which should get none", label, c, n)
		}
	}
	t.Logf("%s: shares over %d requests:%s", label, total, b.String())
}

// consulMetric returns the value of one sample of /metrics (name with its
// labels exactly as exposed, e.g. `x_total{upstream="api"}`); ok is false
// when it is absent.
func consulMetric(t testing.TB, s *Sidecar, sample string) (float64, bool) {
	t.Helper()
	_, body := s.Get(t, "/metrics")
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, sample+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("/metrics: %q: %v", line, err)
			}
			return v, true
		}
	}
	return 0, false
}

// consulGet is one GET through a sidecar listener: status, X-Backend, body.
func consulGet(client *http.Client, url string) (int, string, string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Backend"), string(body), nil
}

// sidemeshVersion is what `sidemesh version` prints after "sidemesh ".
func sidemeshVersion(t testing.TB) string {
	t.Helper()
	out, err := exec.Command(sidemeshBin(t), "version").Output()
	if err != nil {
		t.Fatalf("sidemesh version: %v", err)
	}
	v, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "sidemesh ")
	if !ok || v == "" {
		t.Fatalf("sidemesh version printed %q", out)
	}
	return v
}

// TestConsulWeightedShares: three backends registered in Consul with
// Weights.Passing 1, 2 and 7 get 10/20/70 % of the traffic through the
// sidecar, with weighted_random and with round_robin.
func TestConsulWeightedShares(t *testing.T) {
	consul := testenv.StartConsul(t)
	cc := consul.Client(t)
	weights := map[string]int{"b1": 1, "b2": 2, "b7": 7}
	want := map[string]uint32{}
	for name, w := range weights {
		b := startBackend(t, name, nil)
		for _, svc := range []string{"api-random", "api-rr"} {
			consulRegister(t, cc, svc, svc+"-"+name, b, api.AgentWeights{Passing: w, Warning: 1}, nil)
		}
		want[b.Addr] = uint32(w)
	}
	lRandom, lRR := freeAddr(t), freeAddr(t)
	sc := startSidecar(t, "sidecar", fmt.Sprintf(`node: shares-1
discovery:
  consul: {address: %s, wait_time: 30s}
upstreams:
  - service: api-random
    listen: %s
    lb_policy: weighted_random
  - service: api-rr
    listen: %s
    lb_policy: round_robin
`, consul.Addr(), lRandom, lRR), true)
	for _, svc := range []string{"api-random", "api-rr"} {
		consulWaitWeights(t, sc, svc, want, 15*time.Second)
	}
	for _, tc := range []struct{ policy, listen string }{{"weighted_random", lRandom}, {"round_robin", lRR}} {
		counts, failed := load(t, "http://"+tc.listen+"/", consulLoadN, consulLoadC)
		if failed != 0 {
			t.Errorf("%s: %d of %d requests failed", tc.policy, failed, consulLoadN)
		}
		consulCheckShares(t, tc.policy, counts, weights)
	}
}

// TestConsulCheckStatusWeights: an instance whose check goes critical gets
// no traffic at all; an instance in warning takes its Weights.Warning, not
// its Weights.Passing (Consul's mapping for Envoy).
func TestConsulCheckStatusWeights(t *testing.T) {
	consul := testenv.StartConsul(t)
	cc := consul.Client(t)
	// ok: all checks passing, Passing 3.
	ok := startBackend(t, "ok", nil)
	consulRegister(t, cc, "api", "api-ok", ok, api.AgentWeights{Passing: 3, Warning: 1},
		&api.AgentServiceCheck{CheckID: "ttl-ok", TTL: "10m", Status: api.HealthPassing})
	// warn: a TTL check in warning; Passing 5 (it would take 62.5 %) but Warning 1 (25 %).
	warn := startBackend(t, "warn", nil)
	consulRegister(t, cc, "api", "api-warn", warn, api.AgentWeights{Passing: 5, Warning: 1},
		&api.AgentServiceCheck{CheckID: "ttl-warn", TTL: "10m", Status: api.HealthWarning})
	// crit: an HTTP check that starts passing and turns critical at its first
	// run, because the backend answers its health path with 500.
	var critProxied atomic.Int64
	crit := startBackend(t, "crit", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			http.Error(w, "sick", http.StatusInternalServerError)
			return
		}
		critProxied.Add(1)
		fmt.Fprint(w, "hello from crit")
	})
	consulRegister(t, cc, "api", "api-crit", crit, api.AgentWeights{Passing: 10, Warning: 10},
		&api.AgentServiceCheck{CheckID: "http-crit", HTTP: "http://" + crit.Addr + "/health", Interval: "1s", Timeout: "1s", Status: api.HealthPassing})

	up := freeAddr(t)
	sc := startSidecar(t, "sidecar", fmt.Sprintf(`node: checks-1
discovery:
  consul: {address: %s, wait_time: 30s}
upstreams:
  - service: api
    listen: %s
`, consul.Addr(), up), true)
	// The critical instance takes no traffic, the warning one sits at its Warning weight.
	consulWaitWeights(t, sc, "api", map[string]uint32{ok.Addr: 3, warn.Addr: 1}, 20*time.Second)
	checks, err := cc.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	if c := checks["http-crit"]; c == nil || c.Status != api.HealthCritical {
		t.Fatalf("http-crit check is %+v, want critical", c)
	}
	counts, failed := load(t, "http://"+up+"/", consulLoadN, consulLoadC)
	if failed != 0 {
		t.Errorf("%d of %d requests failed", failed, consulLoadN)
	}
	consulCheckShares(t, "passing(3)/warning(Passing 5, Warning 1)/critical", counts, map[string]int{"ok": 3, "warn": 1})
	if n := critProxied.Load(); n != 0 {
		t.Errorf("the critical instance got %d requests, want 0", n)
	}

	// The warning instance recovers: it takes its Passing weight again.
	if err := cc.Agent().PassTTL("ttl-warn", "recovered"); err != nil {
		t.Fatal(err)
	}
	consulWaitWeights(t, sc, "api", map[string]uint32{ok.Addr: 3, warn.Addr: 5}, 10*time.Second)
}

// TestConsulWeightChangeFollowed: re-registering an instance with a new
// weight reaches /clusters and the traffic shares within 5 s.
func TestConsulWeightChangeFollowed(t *testing.T) {
	consul := testenv.StartConsul(t)
	cc := consul.Client(t)
	a := startBackend(t, "a", nil)
	b := startBackend(t, "b", nil)
	consulRegister(t, cc, "api", "api-a", a, api.AgentWeights{Passing: 1, Warning: 1}, nil)
	consulRegister(t, cc, "api", "api-b", b, api.AgentWeights{Passing: 1, Warning: 1}, nil)
	up := freeAddr(t)
	sc := startSidecar(t, "sidecar", fmt.Sprintf(`node: follow-1
discovery:
  consul: {address: %s}
upstreams:
  - service: api
    listen: %s
    lb_policy: round_robin
`, consul.Addr(), up), true)
	consulWaitWeights(t, sc, "api", map[string]uint32{a.Addr: 1, b.Addr: 1}, 15*time.Second)

	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	// bShare sends one batch through the sidecar and returns b's share.
	const batch = 40
	bShare := func() float64 {
		nb := 0
		for range batch {
			code, backend, body, err := consulGet(client, "http://"+up+"/")
			if err != nil || code != 200 {
				t.Fatalf("request through the sidecar: %d %q %v", code, body, err)
			}
			if backend == "b" {
				nb++
			}
		}
		return float64(nb) / batch
	}
	if s := bShare(); math.Abs(s-0.5) > 0.1 {
		t.Fatalf("before the change b has %.0f%% of the traffic, want 50%%", 100*s)
	}

	// Two changes: b 1 → 9 (50 % → 90 %), then 9 → 1 (back to 50 %).
	// The default wait_time (5 m) is in force: the change must wake the
	// blocking query, not wait for it to time out.
	for _, step := range []struct {
		weight int
		done   func(share float64) bool
	}{
		{9, func(s float64) bool { return s >= 0.8 }},
		{1, func(s float64) bool { return s <= 0.6 }},
	} {
		t0 := time.Now()
		consulRegister(t, cc, "api", "api-b", b, api.AgentWeights{Passing: step.weight, Warning: 1}, nil)
		var tClusters, tTraffic time.Duration
		deadline := t0.Add(4 * consulFollowBound)
		var last float64
		for (tClusters == 0 || tTraffic == 0) && time.Now().Before(deadline) {
			if tClusters == 0 && consulWeightsMatch(t, sc, "api", map[string]uint32{a.Addr: 1, b.Addr: uint32(step.weight)}) == nil {
				tClusters = time.Since(t0)
			}
			if tTraffic == 0 {
				if last = bShare(); step.done(last) {
					tTraffic = time.Since(t0)
				}
			}
		}
		if tClusters == 0 || tTraffic == 0 {
			t.Fatalf("weight of b → %d: not followed within %v (/clusters after %v, traffic after %v; b's last share %.0f%%)",
				step.weight, deadline.Sub(t0), tClusters, tTraffic, 100*last)
		}
		t.Logf("weight of b → %d: /clusters followed in %v, traffic shares moved (b %.0f%% of a %d-request batch) in %v",
			step.weight, tClusters.Round(time.Millisecond), 100*last, batch, tTraffic.Round(time.Millisecond))
		if tClusters > consulFollowBound || tTraffic > consulFollowBound {
			t.Errorf("weight of b → %d: followed in %v (/clusters) and %v (traffic), want within %v",
				step.weight, tClusters, tTraffic, consulFollowBound)
		}
	}
}

// TestConsulRegistersLocalService: `service:` with `inbound:` registers the
// instance (ID = node, Weights.Passing = service.weight, meta
// sidemesh_version, a check on /ready), which other sidecars then route to;
// SIGTERM deregisters it and exits 0. A service.health_check moves the
// Consul check to the app's health path.
func TestConsulRegistersLocalService(t *testing.T) {
	consul := testenv.StartConsul(t)
	cc := consul.Client(t)
	version := sidemeshVersion(t)
	app := startBackend(t, "app", nil)
	_, appPort := consulSplit(t, app.Addr)
	inbound, up := freeAddr(t), freeAddr(t)
	_, inPort := consulSplit(t, inbound)
	const node = "web-e2e-1"
	sc := startSidecar(t, "sidecar", fmt.Sprintf(`node: %s
service:
  name: web
  port: %d
  inbound: %s
  weight: 7
discovery:
  consul: {address: %s, wait_time: 30s}
upstreams:
  - service: web
    listen: %s
`, node, appPort, inbound, consul.Addr(), up), true)

	var svc *api.AgentService
	testenv.Eventually(t, 15*time.Second, "the agent has service "+node, func() error {
		s, _, err := cc.Agent().Service(node, nil)
		if err != nil {
			return err
		}
		svc = s
		return nil
	})
	if svc.Service != "web" || svc.Address != "127.0.0.1" || svc.Port != inPort {
		t.Errorf("registered %s at %s:%d, want web at 127.0.0.1:%d", svc.Service, svc.Address, svc.Port, inPort)
	}
	if svc.Weights.Passing != 7 || svc.Weights.Warning != 1 {
		t.Errorf("registered weights %+v, want Passing 7, Warning 1", svc.Weights)
	}
	if got := svc.Meta["sidemesh_version"]; got != version {
		t.Errorf("meta sidemesh_version = %q, want %q (meta %v)", got, version, svc.Meta)
	}
	// The check is an HTTP check on the sidecar's /ready, and it passes.
	testenv.Eventually(t, 20*time.Second, "the registration's check passes", func() error {
		checks, err := cc.Agent().Checks()
		if err != nil {
			return err
		}
		for _, c := range checks {
			if c.ServiceID != node {
				continue
			}
			if c.Type != "http" || !strings.Contains(c.Output, "http://"+sc.Admin+"/ready") {
				return fmt.Errorf("check %s: type %q output %q, want an http check of %s/ready", c.CheckID, c.Type, c.Output, sc.Admin)
			}
			if c.Status != api.HealthPassing {
				return fmt.Errorf("check %s is %s: %s", c.CheckID, c.Status, c.Output)
			}
			return nil
		}
		return fmt.Errorf("no check for service %s", node)
	})
	// The sidecar discovers its own registration and routes to it:
	// outbound listener → Consul endpoint (inbound) → app.
	consulWaitWeights(t, sc, "web", map[string]uint32{inbound: 7}, 15*time.Second)
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	if code, backend, body, err := consulGet(client, "http://"+up+"/"); err != nil || code != 200 || backend != "app" {
		t.Fatalf("through the registered inbound: %d %q %q %v", code, backend, body, err)
	}

	// SIGTERM: deregistered before the process exits, exit code 0.
	if code := sc.Terminate(t); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
	var se api.StatusError
	if _, _, err := cc.Agent().Service(node, nil); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Errorf("after exit the agent still has %s (err %v), want 404", node, err)
	}
	testenv.Eventually(t, 10*time.Second, "the catalog drops "+node, func() error {
		entries, _, err := cc.Catalog().Service("web", "", nil)
		if err != nil {
			return err
		}
		if len(entries) != 0 {
			return fmt.Errorf("catalog still has %d instance(s) of web", len(entries))
		}
		return nil
	})

	// With service.health_check the Consul check runs against the app's
	// health path, so an app that fails it leaves the catalog's healthy set.
	var sick atomic.Bool
	var healthz atomic.Int64
	app2 := startBackend(t, "app2", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			healthz.Add(1)
			if sick.Load() {
				http.Error(w, "sick", http.StatusInternalServerError)
				return
			}
		}
		fmt.Fprint(w, "ok")
	})
	_, app2Port := consulSplit(t, app2.Addr)
	const node2 = "web-e2e-2"
	sc2 := startSidecar(t, "sidecar2", fmt.Sprintf(`node: %s
service:
  name: web
  port: %d
  inbound: %s
  weight: 3
  health_check: {http: /healthz, interval: 1s}
discovery:
  consul: {address: %s}
`, node2, app2Port, freeAddr(t), consul.Addr()), true)
	passing := func(want int) func() error {
		return func() error {
			entries, _, err := cc.Health().Service("web", "", true, nil)
			if err != nil {
				return err
			}
			if len(entries) != want {
				return fmt.Errorf("%d passing instance(s) of web, want %d", len(entries), want)
			}
			return nil
		}
	}
	testenv.Eventually(t, 20*time.Second, node2+" passes its app health check", passing(1))
	if healthz.Load() == 0 {
		t.Errorf("the Consul check of %s never hit the app's /healthz", node2)
	}
	sick.Store(true)
	testenv.Eventually(t, 20*time.Second, node2+" turns critical with its app", passing(0))
	if code := sc2.Terminate(t); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
}

// TestConsulOutageAndRestart: killing Consul leaves the traffic alone (the
// last endpoints stay) while /clusters and /metrics report the trouble; a
// restarted (empty, -dev) agent gets the sidecar's registration back by
// itself, and weights registered afterwards are followed.
func TestConsulOutageAndRestart(t *testing.T) {
	consul := testenv.StartConsul(t)
	cc := consul.Client(t)
	a := startBackend(t, "a", nil)
	b := startBackend(t, "b", nil)
	consulRegister(t, cc, "api", "api-a", a, api.AgentWeights{Passing: 1, Warning: 1}, nil)
	consulRegister(t, cc, "api", "api-b", b, api.AgentWeights{Passing: 3, Warning: 1}, nil)
	app := startBackend(t, "app", nil)
	_, appPort := consulSplit(t, app.Addr)
	up := freeAddr(t)
	const node = "web-outage-1"
	sc := startSidecar(t, "sidecar", fmt.Sprintf(`node: %s
service:
  name: web
  port: %d
  inbound: %s
  weight: 4
discovery:
  consul: {address: %s, wait_time: 30s}
upstreams:
  - service: api
    listen: %s
    lb_policy: weighted_random
`, node, appPort, freeAddr(t), consul.Addr(), up), true)
	consulWaitWeights(t, sc, "api", map[string]uint32{a.Addr: 1, b.Addr: 3}, 15*time.Second)
	testenv.Eventually(t, 15*time.Second, "the agent has "+node, func() error {
		_, _, err := cc.Agent().Service(node, nil)
		return err
	})
	if v, _ := consulMetric(t, sc, `sidemesh_discovery_consul_failures_total{upstream="api"}`); v != 0 {
		t.Fatalf("consul failures before the outage = %v, want 0", v)
	}

	// Kill the agent in the middle of a load.
	var (
		wg     sync.WaitGroup
		counts map[string]int
		failed int
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		counts, failed = load(t, "http://"+up+"/", consulLoadN, 4)
	}()
	consul.Stop()
	tKilled := time.Now()
	testenv.Eventually(t, 15*time.Second, "/clusters reports the outage", func() error {
		cv := sc.Cluster(t, "api")
		if cv.DiscoveryError == "" {
			return errors.New("no discovery_error yet")
		}
		if len(cv.Endpoints) != 2 {
			return fmt.Errorf("endpoints %+v, want the last two kept", cv.Endpoints)
		}
		return nil
	})
	testenv.Eventually(t, 15*time.Second, "/metrics counts the failures", func() error {
		v, ok := consulMetric(t, sc, `sidemesh_discovery_consul_failures_total{upstream="api"}`)
		if !ok || v < 1 {
			return fmt.Errorf("sidemesh_discovery_consul_failures_total = %v (present %v)", v, ok)
		}
		return nil
	})
	wg.Wait()
	loadEnd := time.Since(tKilled)
	if failed != 0 {
		t.Errorf("during the outage %d of %d requests failed, want 0", failed, consulLoadN)
	}
	consulCheckShares(t, "across the kill (load ran until "+loadEnd.Round(time.Millisecond).String()+" after it)", counts, map[string]int{"a": 1, "b": 3})
	// Another bounded load entirely inside the outage.
	counts, failed = load(t, "http://"+up+"/", 1000, 4)
	if failed != 0 {
		t.Errorf("inside the outage %d of 1000 requests failed, want 0", failed)
	}
	if counts["a"]+counts["b"] != 1000 {
		t.Errorf("inside the outage: %v", counts)
	}
	cv := sc.Cluster(t, "api")
	fails, _ := consulMetric(t, sc, `sidemesh_discovery_consul_failures_total{upstream="api"}`)
	stale, _ := consulMetric(t, sc, `sidemesh_discovery_stale_seconds{upstream="api"}`)
	t.Logf("outage: /clusters stale_seconds %.2f, discovery_error %q; metrics failures_total %v, stale_seconds %.2f",
		cv.StaleSeconds, cv.DiscoveryError, fails, stale)
	if cv.StaleSeconds <= 0 || stale <= 0 {
		t.Errorf("staleness not reported: /clusters stale_seconds %v, metric %v", cv.StaleSeconds, stale)
	}
	if ready, body := sc.Get(t, "/ready"); ready != 200 {
		t.Errorf("/ready during the outage = %d %q, want 200 (the last endpoints are served)", ready, body)
	}

	// Restart: the -dev agent comes back empty.
	tRestart := time.Now()
	consul.Restart()
	tUp := time.Now()
	testenv.Eventually(t, 30*time.Second, "the sidecar registers "+node+" again", func() error {
		_, _, err := cc.Agent().Service(node, nil)
		return err
	})
	tReg := time.Now()
	t.Logf("restart: agent up %v after the restart began; registration restored %v after the agent was up (%v after the restart began)",
		tUp.Sub(tRestart).Round(time.Millisecond), tReg.Sub(tUp).Round(time.Millisecond), tReg.Sub(tRestart).Round(time.Millisecond))
	// The agent may answer before the sidecar has read its own register
	// call's response: poll.
	testenv.Eventually(t, 10*time.Second, "sidemesh_consul_registrations_total counts the restore", func() error {
		if v, _ := consulMetric(t, sc, `sidemesh_consul_registrations_total`); v < 2 {
			return fmt.Errorf("sidemesh_consul_registrations_total = %v, want >= 2", v)
		}
		return nil
	})
	// The restarted agent knows no backends: say so in the log, then
	// register them again with changed weights.
	t.Logf("restart: before the backends are registered again /clusters api has %d endpoint(s)", len(sc.Cluster(t, "api").Endpoints))
	t0 := time.Now()
	consulRegister(t, cc, "api", "api-a", a, api.AgentWeights{Passing: 3, Warning: 1}, nil)
	consulRegister(t, cc, "api", "api-b", b, api.AgentWeights{Passing: 1, Warning: 1}, nil)
	consulWaitWeights(t, sc, "api", map[string]uint32{a.Addr: 3, b.Addr: 1}, 15*time.Second)
	follow := time.Since(t0)
	// Not held to consulFollowBound: the source may still be in its
	// reconnect back-off (full jitter, at most DefaultMaxBackoff = 5 s after
	// its last failed query) when the backends come back.
	t.Logf("restart: new weights followed %v after the re-registration", follow.Round(time.Millisecond))
	if cv := sc.Cluster(t, "api"); cv.DiscoveryError != "" {
		t.Errorf("discovery_error still %q after recovery", cv.DiscoveryError)
	}
	counts, failed = load(t, "http://"+up+"/", consulLoadN, consulLoadC)
	if failed != 0 {
		t.Errorf("after the restart %d of %d requests failed", failed, consulLoadN)
	}
	consulCheckShares(t, "after the restart", counts, map[string]int{"a": 3, "b": 1})
	if code := sc.Terminate(t); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
}

// TestConsulUnreachableAtStart: `sidemesh run` against a Consul that does
// not answer binds every listener, answers /ready 503 and the upstream
// listener 503 "no healthy upstream" (it does not exit, hang or crash);
// once the agent comes up the first snapshot arrives and /ready turns 200.
func TestConsulUnreachableAtStart(t *testing.T) {
	consul := testenv.StartConsul(t)
	consul.Stop() // keep its address, with nothing listening there
	be := startBackend(t, "a", nil)
	app := startBackend(t, "app", nil)
	_, appPort := consulSplit(t, app.Addr)
	up := freeAddr(t)
	const node = "web-late-1"
	sc := startSidecar(t, "sidecar", fmt.Sprintf(`node: %s
service:
  name: web
  port: %d
  inbound: %s
discovery:
  consul: {address: %s, wait_time: 30s}
upstreams:
  - service: api
    listen: %s
`, node, appPort, freeAddr(t), consul.Addr(), up), false)

	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	// Until the first snapshot: /ready 503 however many queries fail, and
	// the upstream listener is bound and answers 503.
	testenv.Eventually(t, 20*time.Second, "several failed Consul queries", func() error {
		if code, body := sc.Get(t, "/ready"); code != http.StatusServiceUnavailable {
			t.Fatalf("/ready = %d %q with Consul unreachable, want 503", code, body)
		}
		v, _ := consulMetric(t, sc, `sidemesh_discovery_consul_failures_total{upstream="api"}`)
		if v < 3 {
			return fmt.Errorf("failures_total = %v", v)
		}
		return nil
	})
	code, body := sc.Get(t, "/ready")
	t.Logf("Consul unreachable: /ready %d %q", code, strings.TrimSpace(body))
	if !strings.Contains(body, "api") {
		t.Errorf("/ready body %q does not name the upstream waiting for endpoints", body)
	}
	code, _, pbody, err := consulGet(client, "http://"+up+"/")
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(pbody, "no healthy upstream") {
		t.Errorf("upstream listener with Consul unreachable: %d %q %v, want 503 no healthy upstream", code, pbody, err)
	}
	if cv := sc.Cluster(t, "api"); cv.DiscoveryError == "" {
		t.Errorf("/clusters api has no discovery_error with Consul unreachable")
	}
	if sc.Exited() {
		t.Fatal("the sidecar exited")
	}

	// The agent comes up: first snapshot, /ready 200, traffic flows, and
	// the registration is made.
	consul.Restart()
	cc := consul.Client(t)
	consulRegister(t, cc, "api", "api-a", be, api.AgentWeights{Passing: 2, Warning: 1}, nil)
	testenv.Eventually(t, 20*time.Second, "/ready 200 after Consul came up", func() error {
		if code, body := sc.Get(t, "/ready"); code != 200 {
			return fmt.Errorf("/ready = %d %q", code, body)
		}
		return nil
	})
	consulWaitWeights(t, sc, "api", map[string]uint32{be.Addr: 2}, 15*time.Second)
	if code, backend, body, err := consulGet(client, "http://"+up+"/"); err != nil || code != 200 || backend != "a" {
		t.Errorf("through the sidecar after Consul came up: %d %q %q %v", code, backend, body, err)
	}
	testenv.Eventually(t, 20*time.Second, "the sidecar registers "+node, func() error {
		_, _, err := cc.Agent().Service(node, nil)
		return err
	})
	if err := sc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := sc.Wait(30 * time.Second); err != nil || code != 0 {
		t.Errorf("exit after SIGTERM: %d %v, want 0", code, err)
	}
}
