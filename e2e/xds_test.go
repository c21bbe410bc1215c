package e2e

// End-to-end tests of xDS: a sidecar whose discovery is xDS (B) fed by the
// binary's own xDS server, embedded in `sidemesh run` (A, xds_server) or
// standalone (`sidemesh xds -c`), and by a hand-driven ADS server in the
// test process for what our server never produces (a broken resource).

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/internal/testenv"
	"github.com/sidemesh/sidemesh/xds"
)

// xdsFollowBound is the bound on how long a change in the control
// plane's endpoints file takes to show in a subscribed sidecar.
const xdsFollowBound = time.Second

// xdsOutage is how long TestXDSControlPlaneRestart keeps the control plane down.
const xdsOutage = 2 * time.Second

// xdsKinds are the two ways the binary runs the xDS server.
var xdsKinds = []string{"embedded", "standalone"}

// xdsEP is one endpoint of an endpoints file.
type xdsEP struct {
	addr   string
	weight uint32
}

// xdsEPs maps service → endpoints.
type xdsEPs map[string][]xdsEP

// xdsWriteEndpoints writes an endpoints file atomically (temp + rename),
// so the file source never reads half a file.
func xdsWriteEndpoints(t testing.TB, path string, eps xdsEPs) {
	t.Helper()
	var b strings.Builder
	b.WriteString("services:\n")
	names := make([]string, 0, len(eps))
	for svc := range eps {
		names = append(names, svc)
	}
	sort.Strings(names)
	for _, svc := range names {
		fmt.Fprintf(&b, "  %s:\n", svc)
		for _, ep := range eps[svc] {
			fmt.Fprintf(&b, "    - {address: %s, weight: %d}\n", ep.addr, ep.weight)
		}
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// xdsUpstream is one upstream in a generated config: service plus extra
// keys, one "key: value" per line (listen is added where wanted).
type xdsUpstream struct {
	service string
	keys    []string
}

// xdsUpstreamsYAML renders upstreams; with listeners, each gets a fresh
// listen address, returned by service.
func xdsUpstreamsYAML(t testing.TB, ups []xdsUpstream, listeners bool) (string, map[string]string) {
	t.Helper()
	var b strings.Builder
	listen := map[string]string{}
	b.WriteString("upstreams:\n")
	for _, u := range ups {
		fmt.Fprintf(&b, "  - service: %s\n", u.service)
		if listeners {
			listen[u.service] = freeAddr(t)
			fmt.Fprintf(&b, "    listen: %s\n", listen[u.service])
		}
		for _, k := range u.keys {
			fmt.Fprintf(&b, "    %s\n", k)
		}
	}
	return b.String(), listen
}

// xdsControlPlane is the binary serving xDS from an endpoints file.
type xdsControlPlane struct {
	kind    string
	Addr    string // the xDS address
	EPFile  string // its discovery.file
	proc    *testenv.Process
	sidecar *Sidecar // embedded only
}

// startXDSControlPlane runs the binary as an xDS server of kind
// "embedded" (`sidemesh run` with xds_server) or "standalone"
// (`sidemesh xds -c`), its source of truth an endpoints file holding eps.
func startXDSControlPlane(t testing.TB, kind string, ups []xdsUpstream, eps xdsEPs) *xdsControlPlane {
	t.Helper()
	dir := t.TempDir()
	cp := &xdsControlPlane{kind: kind, Addr: freeAddr(t), EPFile: filepath.Join(dir, "endpoints.yaml")}
	xdsWriteEndpoints(t, cp.EPFile, eps)
	upsYAML, _ := xdsUpstreamsYAML(t, ups, false)
	cfg := fmt.Sprintf("node: xds-cp\ndiscovery: {file: %s}\nxds_server: {listen: %s}\n%s", cp.EPFile, cp.Addr, upsYAML)
	switch kind {
	case "embedded":
		cp.sidecar = startSidecar(t, "xds-cp-embedded", cfg, true)
		cp.proc = cp.sidecar.Process
	case "standalone":
		path := filepath.Join(dir, "xds.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		cp.proc = testenv.StartProcess(t, "xds-cp-standalone", sidemeshBin(t), "xds", "-admin", "127.0.0.1:0", "-c", path)
	default:
		t.Fatalf("unknown control plane kind %q", kind)
	}
	cp.waitServing(t)
	return cp
}

// waitServing waits until the xDS port accepts connections (and, for the
// embedded kind, the sidecar is ready).
func (cp *xdsControlPlane) waitServing(t testing.TB) {
	t.Helper()
	cp.proc.WaitReady(30*time.Second, func() error {
		c, err := net.DialTimeout("tcp", cp.Addr, time.Second)
		if err != nil {
			return err
		}
		c.Close()
		if cp.sidecar != nil {
			resp, err := http.Get("http://" + cp.sidecar.Admin + "/ready")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("/ready = %d", resp.StatusCode)
			}
		}
		return nil
	})
}

// startXDSClient runs sidecar B with discovery.xds → addr; it returns B
// and each upstream's listen address.
func startXDSClient(t testing.TB, name, addr string, ups []xdsUpstream) (*Sidecar, map[string]string) {
	t.Helper()
	upsYAML, listen := xdsUpstreamsYAML(t, ups, true)
	cfg := fmt.Sprintf("node: %s\ndiscovery: {xds: {address: %s}}\n%s", name, addr, upsYAML)
	return startSidecar(t, name, cfg, true), listen
}

// xdsWeightsErr is nil when B's /clusters shows exactly want for svc, in
// the endpoint set and in the picker in force (effective_weight).
func xdsWeightsErr(t testing.TB, s *Sidecar, svc string, want map[string]uint32) error {
	t.Helper()
	got := map[string]uint32{}
	for _, ep := range s.Cluster(t, svc).Endpoints {
		if ep.EffectiveWeight != ep.Weight {
			return fmt.Errorf("%s: weight %d, effective_weight %d (picker not rebuilt yet)", ep.Address, ep.Weight, ep.EffectiveWeight)
		}
		got[ep.Address] = ep.Weight
	}
	if len(got) != len(want) {
		return fmt.Errorf("endpoints %v, want %v", got, want)
	}
	for a, w := range want {
		if got[a] != w {
			return fmt.Errorf("endpoints %v, want %v", got, want)
		}
	}
	return nil
}

func xdsWeightMap(eps []xdsEP) map[string]uint32 {
	m := map[string]uint32{}
	for _, ep := range eps {
		m[ep.addr] = ep.weight
	}
	return m
}

// xdsExactSplit checks a round_robin split over whole schedule cycles:
// every backend gets exactly n·w/Σw (±slack).
func xdsExactSplit(t testing.TB, counts map[string]int, n int, eps []xdsEP, names map[string]string, slack int) {
	t.Helper()
	var sum uint32
	for _, ep := range eps {
		sum += ep.weight
	}
	total := 0
	for _, ep := range eps {
		want := n * int(ep.weight) / int(sum)
		got := counts[names[ep.addr]]
		total += got
		if got < want-slack || got > want+slack {
			t.Errorf("%s (weight %d) got %d of %d requests, want %d±%d: %v", names[ep.addr], ep.weight, got, n, want, slack, counts)
		}
	}
	if total != n {
		t.Errorf("requests reached backends outside the endpoint set: %v (want %d on %v)", counts, n, eps)
	}
}

// xdsClientStats is /config_dump's xds_client.
type xdsClientStats struct {
	Connected bool   `json:"connected"`
	Streams   uint64 `json:"streams"`
	LastError string `json:"last_error"`
	Types     map[string]struct {
		Version  string `json:"version"`
		ACKs     uint64 `json:"acks"`
		NACKs    uint64 `json:"nacks"`
		LastNACK *struct {
			Version string `json:"version"`
			Detail  string `json:"detail"`
		} `json:"last_nack"`
	} `json:"types"`
}

func xdsClientDump(t testing.TB, s *Sidecar) xdsClientStats {
	t.Helper()
	_, body := s.Get(t, "/config_dump")
	var v struct {
		XDSClient *xdsClientStats `json:"xds_client"`
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("/config_dump: %v: %s", err, body)
	}
	if v.XDSClient == nil {
		t.Fatalf("/config_dump has no xds_client: %s", body)
	}
	return *v.XDSClient
}

// xdsMetric reads one sample (name with its labels, as printed) from /metrics.
func xdsMetric(t testing.TB, s *Sidecar, series string) float64 {
	t.Helper()
	_, body := s.Get(t, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("/metrics %s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no %s", series)
	return 0
}

// xdsBackends starts n named backends and returns them with address → name.
func xdsBackends(t testing.TB, n int) ([]*Backend, map[string]string) {
	t.Helper()
	bs := make([]*Backend, n)
	names := map[string]string{}
	for i := range bs {
		bs[i] = startBackend(t, "b"+strconv.Itoa(i+1), nil)
		names[bs[i].Addr] = bs[i].Name
	}
	return bs, names
}

// xdsMeasureFollow writes eps and measures the time from the write until
// B's /clusters shows svc's new endpoints.
func xdsMeasureFollow(t testing.TB, cp *xdsControlPlane, b *Sidecar, svc string, eps xdsEPs) time.Duration {
	t.Helper()
	start := time.Now()
	xdsWriteEndpoints(t, cp.EPFile, eps)
	testenv.Eventually(t, 15*time.Second, "B to follow the endpoints file", func() error {
		return xdsWeightsErr(t, b, svc, xdsWeightMap(eps[svc]))
	})
	return time.Since(start)
}

// Weights served by the binary's xDS server reach B and split B's traffic
// exactly (round_robin), and B follows every change of the control
// plane's endpoints file within the bound (1 s).
func TestXDSWeightsAndFollow(t *testing.T) {
	for _, kind := range xdsKinds {
		t.Run(kind, func(t *testing.T) {
			bs, names := xdsBackends(t, 4)
			ep := func(i int, w uint32) xdsEP { return xdsEP{bs[i].Addr, w} }
			initial := []xdsEP{ep(0, 1), ep(1, 3), ep(2, 6)}
			cp := startXDSControlPlane(t, kind, []xdsUpstream{{"api", []string{"lb_policy: round_robin"}}}, xdsEPs{"api": initial})
			b, listen := startXDSClient(t, "xds-b", cp.Addr, []xdsUpstream{{service: "api"}})
			url := "http://" + listen["api"] + "/"

			testenv.Eventually(t, 10*time.Second, "B to take A's endpoints and lb_policy", func() error {
				if p := b.Cluster(t, "api").LBPolicy; p != "round_robin" {
					return fmt.Errorf("lb_policy %q", p)
				}
				return xdsWeightsErr(t, b, "api", xdsWeightMap(initial))
			})
			// 1000 requests are 100 whole cycles of the 1:3:6 schedule.
			counts, failed := load(t, url, 1000, 4)
			if failed != 0 {
				t.Fatalf("%d of 1000 requests through B failed", failed)
			}
			t.Logf("%s: split through B for weights 1:3:6: %v", kind, counts)
			xdsExactSplit(t, counts, 1000, initial, names, 0)

			changes := [][]xdsEP{
				{ep(0, 2), ep(1, 3), ep(2, 5)},
				{ep(0, 2), ep(1, 3), ep(2, 5), ep(3, 10)},
				{ep(1, 1), ep(3, 1)},
				{ep(0, 6), ep(1, 3), ep(2, 1)},
				{ep(0, 1), ep(1, 1), ep(2, 1), ep(3, 7)},
			}
			var took []time.Duration
			for _, c := range changes {
				took = append(took, xdsMeasureFollow(t, cp, b, "api", xdsEPs{"api": c}))
			}
			sorted := slices.Clone(took)
			slices.Sort(sorted)
			ms := func(ds []time.Duration) []int64 {
				out := make([]int64, len(ds))
				for i, d := range ds {
					out[i] = d.Milliseconds()
				}
				return out
			}
			t.Logf("%s: endpoints file write → B's /clusters: %v ms (sorted %v; median %d ms, max %d ms; bound %v)",
				kind, ms(took), ms(sorted), sorted[len(sorted)/2].Milliseconds(), sorted[len(sorted)-1].Milliseconds(), xdsFollowBound)
			if m := sorted[len(sorted)/2]; m > xdsFollowBound {
				t.Errorf("median time to follow a change %v, want ≤ %v", m, xdsFollowBound)
			}
			if over := len(sorted) - sort.Search(len(sorted), func(i int) bool { return sorted[i] > xdsFollowBound }); over > 1 {
				t.Errorf("%d of %d changes took more than %v: %v", over, len(sorted), xdsFollowBound, sorted)
			}

			// Traffic follows the last change: 1000 = 100 cycles of 1:1:1:7.
			counts, failed = load(t, url, 1000, 4)
			if failed != 0 {
				t.Fatalf("%d of 1000 requests through B failed after the changes", failed)
			}
			xdsExactSplit(t, counts, 1000, changes[len(changes)-1], names, 0)

			st := xdsClientDump(t, b)
			for typ, ts := range st.Types {
				if ts.NACKs != 0 {
					t.Errorf("B NACKed %s: %+v", typ, ts)
				}
			}
			if !st.Connected || st.Streams != 1 {
				t.Errorf("B's xds_client %+v, want connected on one stream", st)
			}
			if v := xdsMetric(t, b, `sidemesh_xds_client_responses_total{type="ClusterLoadAssignment",verdict="ack"}`); v < float64(1+len(changes)) {
				t.Errorf("B ACKed %v EDS responses, want ≥ %d", v, 1+len(changes))
			}
			if cp.sidecar != nil {
				if v := xdsMetric(t, cp.sidecar, `sidemesh_xds_server_requests_total{verdict="nack"}`); v != 0 {
					t.Errorf("A's server saw %v NACKs", v)
				}
				if v := xdsMetric(t, cp.sidecar, `sidemesh_xds_server_requests_total{verdict="ack"}`); v < float64(1+len(changes)) {
					t.Errorf("A's server saw %v ACKs, want ≥ %d", v, 1+len(changes))
				}
			}
		})
	}
}

// CDS carries the control plane's upstream settings: B takes every key its
// own file leaves out (lb_policy, circuit_breakers) and keeps every key it
// sets; the breaker it takes is the one enforced on B's traffic.
func TestXDSClusterSettings(t *testing.T) {
	for _, kind := range xdsKinds {
		t.Run(kind, func(t *testing.T) {
			var inFlight atomic.Int64
			release := make(chan struct{})
			var once sync.Once
			t.Cleanup(func() { once.Do(func() { close(release) }) })
			slow := startBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
				inFlight.Add(1)
				defer inFlight.Add(-1)
				select {
				case <-release:
				case <-r.Context().Done():
				}
				fmt.Fprint(w, "released")
			})
			web := startBackend(t, "web", nil)
			cpKeys := []string{"lb_policy: least_request", "circuit_breakers: {max_requests: 7}"}
			cp := startXDSControlPlane(t, kind,
				[]xdsUpstream{{"api", cpKeys}, {"web", cpKeys}},
				xdsEPs{"api": {{slow.Addr, 1}}, "web": {{web.Addr, 1}}})
			// B sets lb_policy for api and circuit_breakers for web; the
			// rest comes from the control plane.
			b, listen := startXDSClient(t, "xds-b", cp.Addr, []xdsUpstream{
				{"api", []string{"lb_policy: round_robin"}},
				{"web", []string{"circuit_breakers: {max_requests: 50}"}},
			})
			type want struct {
				policy string
				limit  uint64
			}
			wants := map[string]want{"api": {"round_robin", 7}, "web": {"least_request", 50}}
			testenv.Eventually(t, 10*time.Second, "B to apply the CDS settings", func() error {
				for svc, w := range wants {
					c := b.Cluster(t, svc)
					if c.LBPolicy != w.policy || c.Breakers.Requests.Limit != w.limit {
						return fmt.Errorf("%s: lb_policy %q, max_requests %d; want %q, %d", svc, c.LBPolicy, c.Breakers.Requests.Limit, w.policy, w.limit)
					}
				}
				return nil
			})
			for svc := range wants {
				c := b.Cluster(t, svc)
				t.Logf("%s: B's /clusters %s: lb_policy %s, circuit_breakers.requests.limit %d", kind, svc, c.LBPolicy, c.Breakers.Requests.Limit)
			}

			// max_requests 7 from the control plane is enforced: of 10
			// concurrent requests held by the backend, 3 overflow.
			const n = 10
			type result struct {
				code       int
				overloaded string
				body       string
				err        error
			}
			results := make(chan result, n)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}, Timeout: 30 * time.Second}
			defer client.CloseIdleConnections()
			for range n {
				go func() {
					resp, err := client.Get("http://" + listen["api"] + "/")
					if err != nil {
						results <- result{err: err}
						return
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					results <- result{code: resp.StatusCode, overloaded: resp.Header.Get("x-sidemesh-overloaded"), body: string(body)}
				}()
			}
			var overflowed []result
			var got []result
			testenv.Eventually(t, 15*time.Second, "7 requests held and 3 overflowing", func() error {
			drain:
				for {
					select {
					case r := <-results:
						got = append(got, r)
						if r.code == 503 && r.overloaded == "true" {
							overflowed = append(overflowed, r)
						}
					default:
						break drain
					}
				}
				if len(got) > len(overflowed) {
					return fmt.Errorf("unexpected answer before release: %+v", got)
				}
				if inFlight.Load() != 7 || len(overflowed) != 3 {
					return fmt.Errorf("%d held at the backend, %d overflowed", inFlight.Load(), len(overflowed))
				}
				return nil
			})
			if len(got) > len(overflowed) {
				t.Fatalf("answers before release: %+v", got)
			}
			t.Logf("%s: overflow answer: %q", kind, overflowed[0].body)
			if !strings.Contains(overflowed[0].body, "max_requests (7)") {
				t.Errorf("overflow body %q, want it to name max_requests (7)", overflowed[0].body)
			}
			once.Do(func() { close(release) })
			for range n - len(got) {
				select {
				case r := <-results:
					if r.err != nil || r.code != 200 {
						t.Errorf("held request: %+v, want 200 once released", r)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("held requests did not finish after release")
				}
			}
		})
	}
}

// The control plane dies (SIGKILL) and comes back on the same address with
// a changed endpoints file: B keeps serving with its last endpoints and
// zero failures, reconnects, resubscribes and catches up.
func TestXDSControlPlaneRestart(t *testing.T) {
	for _, kind := range xdsKinds {
		t.Run(kind, func(t *testing.T) {
			bs, names := xdsBackends(t, 3)
			before := []xdsEP{{bs[0].Addr, 1}, {bs[1].Addr, 3}}
			after := []xdsEP{{bs[1].Addr, 1}, {bs[2].Addr, 3}}
			cp := startXDSControlPlane(t, kind, []xdsUpstream{{"api", []string{"lb_policy: round_robin"}}}, xdsEPs{"api": before})
			b, listen := startXDSClient(t, "xds-b", cp.Addr, []xdsUpstream{{service: "api"}})
			url := "http://" + listen["api"] + "/"
			testenv.Eventually(t, 10*time.Second, "B's first endpoints", func() error {
				return xdsWeightsErr(t, b, "api", xdsWeightMap(before))
			})

			// Background load from before the kill until the test stops
			// it, after the restart and the catch-up were observed. The
			// safety bound only ends a load the test forgot to stop; it is
			// far beyond the sum of the waits below.
			const loadBound = 5 * time.Minute
			var sent, failed atomic.Int64
			var lastErr atomic.Value
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				client := &http.Client{Timeout: 10 * time.Second}
				defer client.CloseIdleConnections()
				deadline := time.Now().Add(loadBound)
				for time.Now().Before(deadline) {
					select {
					case <-stop:
						return
					default:
					}
					resp, err := client.Get(url)
					sent.Add(1)
					if err != nil {
						failed.Add(1)
						lastErr.Store(err.Error())
						continue
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						failed.Add(1)
						lastErr.Store(resp.Status)
					}
				}
			}()
			stopLoad := func() {
				select {
				case <-stop:
				default:
					close(stop)
				}
				<-done
			}
			defer stopLoad()
			loadRunning := func() {
				t.Helper()
				select {
				case <-done:
					t.Fatalf("the background load ended before the test stopped it (safety bound %v)", loadBound)
				default:
				}
			}
			advance := func(what string, n int64) {
				t.Helper()
				from := sent.Load()
				testenv.Eventually(t, 20*time.Second, what, func() error {
					loadRunning()
					if got := sent.Load() - from; got < n {
						return fmt.Errorf("%d requests sent", got)
					}
					return nil
				})
			}
			advance("load before the kill", 100)

			cp.proc.Stop() // SIGKILL
			killed := time.Now()
			testenv.Eventually(t, 15*time.Second, "B to notice the outage", func() error {
				if st := xdsClientDump(t, b); st.Connected {
					return fmt.Errorf("xds_client still connected")
				}
				return nil
			})
			// Keep the control plane down for a while (B's reconnect
			// backoff grows meanwhile) with traffic flowing through B.
			from := sent.Load()
			testenv.Eventually(t, 30*time.Second, "load during a 2 s outage", func() error {
				loadRunning()
				if n := sent.Load() - from; n < 200 || time.Since(killed) < xdsOutage {
					return fmt.Errorf("%d requests in %v of outage", n, time.Since(killed))
				}
				return nil
			})
			if err := xdsWeightsErr(t, b, "api", xdsWeightMap(before)); err != nil {
				t.Fatalf("during the outage B lost its endpoints: %v", err)
			}
			if c := b.Cluster(t, "api"); c.DiscoveryError == "" {
				t.Errorf("during the outage /clusters shows no discovery_error")
			}

			xdsWriteEndpoints(t, cp.EPFile, xdsEPs{"api": after})
			outage := time.Since(killed)
			restarted := time.Now()
			if err := cp.proc.Start(); err != nil {
				t.Fatal(err)
			}
			cp.waitServing(t)
			serving := time.Since(restarted)
			testenv.Eventually(t, 30*time.Second, "B to catch up after the restart", func() error {
				return xdsWeightsErr(t, b, "api", xdsWeightMap(after))
			})
			caughtUp := time.Since(restarted)
			t.Logf("%s: outage %v; control plane serving %v after restart; B caught up %v after restart (%v after serving)",
				kind, outage.Round(time.Millisecond), serving.Round(time.Millisecond), caughtUp.Round(time.Millisecond), (caughtUp - serving).Round(time.Millisecond))
			advance("load after the catch-up", 100)
			loadRunning()
			stopLoad()
			if f := failed.Load(); f != 0 {
				t.Errorf("%d of %d requests through B failed across the restart (last: %v)", f, sent.Load(), lastErr.Load())
			}
			t.Logf("%s: %d requests through B across the restart, %d failed", kind, sent.Load(), failed.Load())

			st := xdsClientDump(t, b)
			if !st.Connected || st.Streams < 2 {
				t.Errorf("B's xds_client %+v, want connected on a second stream", st)
			}
			counts, nfail := load(t, url, 400, 4)
			if nfail != 0 {
				t.Fatalf("%d of 400 requests failed after the catch-up", nfail)
			}
			xdsExactSplit(t, counts, 400, after, names, 0)
		})
	}
}

// xdsFakeADS is a hand-driven ADS server (state of the world): it sends
// each subscribed type's current response once per version and never
// repeats a response the client NACKed; it records the NACKs.
type xdsFakeADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	mu      sync.Mutex
	cur     map[string]*discoveryv3.DiscoveryResponse
	changed chan struct{}
	nonce   atomic.Int64
	nacks   []*discoveryv3.DiscoveryRequest
}

func startXDSFakeADS(t testing.TB) (*xdsFakeADS, string) {
	t.Helper()
	f := &xdsFakeADS{cur: map[string]*discoveryv3.DiscoveryResponse{}, changed: make(chan struct{})}
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return f, ln.Addr().String()
}

// set makes version the current response of typeURL.
func (f *xdsFakeADS) set(t testing.TB, typeURL, version string, msgs ...proto.Message) {
	t.Helper()
	resp := &discoveryv3.DiscoveryResponse{TypeUrl: typeURL, VersionInfo: version}
	for _, m := range msgs {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		resp.Resources = append(resp.Resources, a)
	}
	f.mu.Lock()
	f.cur[typeURL] = resp
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *xdsFakeADS) nackDetails() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.nacks {
		out = append(out, r.GetErrorDetail().GetMessage())
	}
	return out
}

func (f *xdsFakeADS) StreamAggregatedResources(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	ctx := st.Context()
	reqs := make(chan *discoveryv3.DiscoveryRequest)
	go func() {
		defer close(reqs)
		for {
			r, err := st.Recv()
			if err != nil {
				return
			}
			select {
			case reqs <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	subscribed := map[string]bool{}
	sent := map[string]string{} // type → version sent on this stream
	for {
		f.mu.Lock()
		changed := f.changed
		var out []*discoveryv3.DiscoveryResponse
		for typ := range subscribed {
			if cur := f.cur[typ]; cur != nil && sent[typ] != cur.GetVersionInfo() {
				resp := proto.Clone(cur).(*discoveryv3.DiscoveryResponse)
				resp.Nonce = strconv.FormatInt(f.nonce.Add(1), 10)
				out = append(out, resp)
				sent[typ] = cur.GetVersionInfo()
			}
		}
		f.mu.Unlock()
		for _, r := range out {
			if err := st.Send(r); err != nil {
				return err
			}
		}
		select {
		case r, ok := <-reqs:
			if !ok {
				return nil
			}
			subscribed[r.GetTypeUrl()] = true
			if r.GetErrorDetail() != nil {
				f.mu.Lock()
				f.nacks = append(f.nacks, r)
				f.mu.Unlock()
			}
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

// xdsCLA is a ClusterLoadAssignment with the weights as given (0 included).
func xdsCLA(t testing.TB, service string, eps []xdsEP) *endpointv3.ClusterLoadAssignment {
	t.Helper()
	var lbs []*endpointv3.LbEndpoint
	for _, ep := range eps {
		host, port, err := net.SplitHostPort(ep.addr)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := strconv.ParseUint(port, 10, 32)
		lbs = append(lbs, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
				}}},
			}},
			HealthStatus:        corev3.HealthStatus_HEALTHY,
			LoadBalancingWeight: wrapperspb.UInt32(ep.weight),
		})
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: service, Endpoints: []*endpointv3.LocalityLbEndpoints{{
		Locality: &corev3.Locality{}, LbEndpoints: lbs, LoadBalancingWeight: wrapperspb.UInt32(1),
	}}}
}

// A broken resource (an endpoint of weight 0) is NACKed with a detail that
// names it, shown in B's /config_dump and counted in /metrics, while B
// keeps serving the last good endpoints; a good update afterwards is
// taken on the same stream.
func TestXDSNACKKeepsLastGood(t *testing.T) {
	bs, names := xdsBackends(t, 3)
	f, addr := startXDSFakeADS(t)
	f.set(t, resource.ClusterType, "c1", xds.Cluster(xds.Defaults("api")))
	good := []xdsEP{{bs[0].Addr, 1}, {bs[1].Addr, 3}}
	f.set(t, resource.EndpointType, "e1", xdsCLA(t, "api", good))

	b, listen := startXDSClient(t, "xds-b", addr, []xdsUpstream{{service: "api"}})
	url := "http://" + listen["api"] + "/"
	testenv.Eventually(t, 10*time.Second, "B's good endpoints", func() error {
		return xdsWeightsErr(t, b, "api", xdsWeightMap(good))
	})
	counts, failed := load(t, url, 400, 4)
	if failed != 0 {
		t.Fatalf("%d of 400 requests failed", failed)
	}
	xdsExactSplit(t, counts, 400, good, names, 0)

	// e2: the weight-3 endpoint now has weight 0, and a new one appears.
	bad := []xdsEP{{bs[0].Addr, 1}, {bs[1].Addr, 0}, {bs[2].Addr, 2}}
	f.set(t, resource.EndpointType, "e2", xdsCLA(t, "api", bad))
	var nack string
	testenv.Eventually(t, 10*time.Second, "B to NACK e2", func() error {
		ts := xdsClientDump(t, b).Types[resource.EndpointType]
		if ts.LastNACK == nil {
			return fmt.Errorf("no last_nack: %+v", ts)
		}
		nack = ts.LastNACK.Detail
		if ts.LastNACK.Version != "e2" || ts.Version != "e1" {
			return fmt.Errorf("last_nack of %q, accepted version %q; want a NACK of e2 keeping e1", ts.LastNACK.Version, ts.Version)
		}
		return nil
	})
	t.Logf("NACK detail in B's /config_dump: %q", nack)
	wantDetail := fmt.Sprintf(`ClusterLoadAssignment "api": endpoint 1 (%s) has load_balancing_weight 0`, bs[1].Addr)
	if !strings.Contains(nack, wantDetail) {
		t.Errorf("NACK detail %q, want it to contain %q", nack, wantDetail)
	}
	testenv.Eventually(t, 10*time.Second, "the NACK to reach the server", func() error {
		for _, d := range f.nackDetails() {
			if strings.Contains(d, wantDetail) {
				return nil
			}
		}
		return fmt.Errorf("server got NACKs %q", f.nackDetails())
	})
	if v := xdsMetric(t, b, `sidemesh_xds_client_responses_total{type="ClusterLoadAssignment",verdict="nack"}`); v < 1 {
		t.Errorf("/metrics EDS nack count %v, want > 0", v)
	}
	if err := xdsWeightsErr(t, b, "api", xdsWeightMap(good)); err != nil {
		t.Fatalf("after the NACK B's /clusters: %v, want the last good endpoints", err)
	}
	before := bs[2].Hits.Load()
	counts, failed = load(t, url, 400, 4)
	if failed != 0 {
		t.Fatalf("%d of 400 requests failed after the NACK", failed)
	}
	xdsExactSplit(t, counts, 400, good, names, 0)
	if n := bs[2].Hits.Load() - before; n != 0 {
		t.Errorf("the endpoint only in the NACKed assignment served %d requests", n)
	}

	// A good e3 after the NACK is accepted on the same stream.
	next := []xdsEP{{bs[0].Addr, 1}, {bs[2].Addr, 1}}
	f.set(t, resource.EndpointType, "e3", xdsCLA(t, "api", next))
	testenv.Eventually(t, 10*time.Second, "B to take e3", func() error {
		return xdsWeightsErr(t, b, "api", xdsWeightMap(next))
	})
	counts, failed = load(t, url, 400, 4)
	if failed != 0 {
		t.Fatalf("%d of 400 requests failed after e3", failed)
	}
	xdsExactSplit(t, counts, 400, next, names, 0)
	st := xdsClientDump(t, b)
	if eds := st.Types[resource.EndpointType]; eds.Version != "e3" || eds.NACKs != 1 || st.Streams != 1 {
		t.Errorf("B's xds_client %+v (EDS %+v), want e3 accepted after exactly 1 NACK on one stream", st, eds)
	}
}
