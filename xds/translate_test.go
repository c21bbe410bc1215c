package xds

import (
	"bytes"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/health"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
	"github.com/sidemesh/sidemesh/upstream"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func ptr[T any](v T) *T { return &v }

func mustSnap(t *testing.T, svc string, v uint64, eps ...discovery.Endpoint) *discovery.Snapshot {
	t.Helper()
	s, err := discovery.NewSnapshot(svc, v, eps)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// goldenJSON renders resources as stable, indented JSON: types and
// resources in name order, protojson's deliberately unstable whitespace
// removed by compacting and re-indenting.
func goldenJSON(t *testing.T, res map[resource.Type][]types.Resource) []byte {
	t.Helper()
	typeURLs := make([]string, 0, len(res))
	for k := range res {
		typeURLs = append(typeURLs, k)
	}
	sort.Strings(typeURLs)
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, tu := range typeURLs {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, _ := json.Marshal(tu)
		buf.Write(k)
		buf.WriteString(":[")
		for j, r := range res[tu] {
			if j > 0 {
				buf.WriteByte(',')
			}
			b, err := protojson.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Compact(&buf, b); err != nil {
				t.Fatal(err)
			}
		}
		buf.WriteByte(']')
	}
	buf.WriteByte('}')
	var out bytes.Buffer
	if err := json.Indent(&out, buf.Bytes(), "", "  "); err != nil {
		t.Fatal(err)
	}
	out.WriteByte('\n')
	return out.Bytes()
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the translation (go test -run %s -update rewrites it):\n--- got\n%s", path, t.Name(), got)
	}
}

func TestResourcesGolden(t *testing.T) {
	defaults := Defaults("api")
	tests := []struct {
		name     string
		settings []Upstream
		snaps    func(t *testing.T) map[string]*discovery.Snapshot
	}{
		{
			name: "weights_and_health",
			settings: []Upstream{
				{Service: "web", Settings: upstream.Settings{LBPolicy: balancer.RoundRobin}},
				{Service: "api"},
			},
			snaps: func(t *testing.T) map[string]*discovery.Snapshot {
				return map[string]*discovery.Snapshot{"api": mustSnap(t, "api", 3,
					discovery.Endpoint{Address: "127.0.0.1:7002", Weight: 3, Meta: map[string]string{"zone": "b"}},
					discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 1},
					discovery.Endpoint{Address: "[::1]:7003", Weight: 2, Health: discovery.Degraded},
					discovery.Endpoint{Address: "10.0.0.4:80", Weight: 5, Health: discovery.Unhealthy},
					discovery.Endpoint{Address: "10.0.0.5:80", Weight: 7, Health: discovery.Draining},
				)}
			},
		},
		{
			name:     "envoy_defaults",
			settings: []Upstream{defaults},
		},
		{
			name: "policies",
			settings: []Upstream{
				{Service: "random", Settings: upstream.Settings{LBPolicy: balancer.WeightedRandom, ConnectTimeout: time.Second}},
				{Service: "lr", Settings: upstream.Settings{LBPolicy: balancer.LeastRequest,
					LB: balancer.Config{LeastRequest: balancer.LeastRequestConfig{ChoiceCount: 3, ActiveRequestBias: ptr(0.5)}}}},
				{Service: "ring", Settings: upstream.Settings{LBPolicy: balancer.RingHash,
					LB: balancer.Config{RingHash: balancer.RingHashConfig{MinimumRingSize: 2048, MaximumRingSize: 4096}}}},
				{Service: "maglev", Settings: upstream.Settings{LBPolicy: balancer.Maglev,
					LB: balancer.Config{Maglev: balancer.MaglevConfig{TableSize: 131}}, HealthyPanicThreshold: ptr(0.0)}},
			},
		},
		{
			name: "breakers_and_health_checks",
			settings: []Upstream{
				{Service: "http", Settings: upstream.Settings{
					HealthCheck: &health.Config{HTTP: &health.HTTPCheck{Path: "/healthz"}, Interval: 2 * time.Second, NoTrafficInterval: time.Minute},
					CircuitBreakers: &breaker.Config{MaxConnections: ptr[uint32](10), MaxPendingRequests: ptr[uint32](20), MaxRequests: ptr[uint32](30), MaxRetries: ptr[uint32](0),
						RetryBudget: &breaker.RetryBudgetConfig{BudgetPercent: ptr(25.0), MinRetryConcurrency: ptr[uint32](4)}}}},
				{Service: "tcp", Settings: upstream.Settings{HealthCheck: &health.Config{TCP: &health.TCPCheck{}, Interval: time.Second, Timeout: 500 * time.Millisecond, UnhealthyThreshold: 5, HealthyThreshold: 1}}},
				{Service: "grpc", Settings: upstream.Settings{HealthCheck: &health.Config{GRPC: &health.GRPCCheck{ServiceName: "grpc.health.v1.Health"}},
					OutlierDetection: &outlier.Config{Consecutive5xx: ptr[uint32](3), Interval: time.Second, MaxEjectionPercent: ptr[uint32](100), EnforcingConsecutive5xx: ptr[uint32](0)}}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var snaps map[string]*discovery.Snapshot
			if tt.snaps != nil {
				snaps = tt.snaps(t)
			}
			res, err := Resources(tt.settings, snaps)
			if err != nil {
				t.Fatal(err)
			}
			for tu, rs := range res {
				for _, r := range rs {
					if v, ok := r.(interface{ ValidateAll() error }); ok {
						if err := v.ValidateAll(); err != nil {
							t.Errorf("%s %s: %v", tu, cache.GetResourceName(r), err)
						}
					}
				}
			}
			snap, err := cache.NewSnapshot("1", res)
			if err != nil {
				t.Fatal(err)
			}
			if err := consistent(snap); err != nil {
				t.Fatal(err)
			}
			checkGolden(t, tt.name, goldenJSON(t, res))
		})
	}
}

func TestResourcesLeavesOutBadAddresses(t *testing.T) {
	snap := mustSnap(t, "api", 1,
		discovery.Endpoint{Address: "api.internal:80", Weight: 1},
		discovery.Endpoint{Address: "127.0.0.1:http", Weight: 1},
		discovery.Endpoint{Address: "127.0.0.1:8080", Weight: 2},
	)
	res, err := Resources([]Upstream{{Service: "api"}}, map[string]*discovery.Snapshot{"api": snap})
	if err == nil || !strings.Contains(err.Error(), "api.internal:80") || !strings.Contains(err.Error(), "127.0.0.1:http") {
		t.Fatalf("err = %v, want both bad endpoints named", err)
	}
	cla := res[resource.EndpointType][0].(*endpointv3.ClusterLoadAssignment)
	eps, err := DecodeLoadAssignment(cla)
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 1 || eps[0].Address != "127.0.0.1:8080" || eps[0].Weight != 2 {
		t.Fatalf("endpoints = %+v, want only 127.0.0.1:8080 weight 2", eps)
	}
}

// cdsPart is what a Cluster carries of an upstream's settings: the rest
// (route and listener settings) is left out.
func cdsPart(s upstream.Settings) upstream.Settings {
	out := upstream.Settings{LBPolicy: s.LBPolicy, LB: s.LB, ConnectTimeout: s.ConnectTimeout,
		HealthyPanicThreshold: s.HealthyPanicThreshold, OutlierDetection: s.OutlierDetection,
		CircuitBreakers: s.CircuitBreakers, HealthCheck: s.HealthCheck}
	if s.ZoneAware { // zone_aware_lb_config (with its min_cluster_size) only when on
		out.ZoneAware, out.ZoneAwareMinClusterSize = true, s.ZoneAwareMinClusterSize
	}
	return out
}

// The client decodes what the server encodes: settings that carry every
// value (as Defaults does) survive the round trip unchanged.
func TestClusterRoundTrip(t *testing.T) {
	with := func(f func(*upstream.Settings)) Upstream {
		u := Defaults("api")
		f(&u.Settings)
		u.Settings.SetDefaults()
		return u
	}
	tests := []struct {
		name string
		u    Upstream
	}{
		{"defaults", Defaults("api")},
		{"weighted_random", with(func(s *upstream.Settings) { s.LBPolicy = balancer.WeightedRandom })},
		{"least_request", with(func(s *upstream.Settings) {
			s.LBPolicy, s.LB.LeastRequest.ChoiceCount, s.LB.LeastRequest.ActiveRequestBias = balancer.LeastRequest, 4, ptr(0.0)
		})},
		{"ring_hash", with(func(s *upstream.Settings) {
			s.LBPolicy, s.LB.RingHash.MinimumRingSize, s.LB.RingHash.MaximumRingSize = balancer.RingHash, 16, 32
		})},
		{"maglev", with(func(s *upstream.Settings) { s.LBPolicy, s.LB.Maglev.TableSize = balancer.Maglev, 251 })},
		{"no_panic_mode", with(func(s *upstream.Settings) { s.HealthyPanicThreshold = ptr(0.0) })},
		{"zone_aware", with(func(s *upstream.Settings) { s.ZoneAware, s.ZoneAwareMinClusterSize = true, ptr(3) })},
		{"outlier_zeros", with(func(s *upstream.Settings) {
			o := *s.OutlierDetection
			o.EnforcingConsecutive5xx, o.MaxEjectionPercent, o.AlwaysEjectOneHost = ptr[uint32](0), ptr[uint32](0), ptr(false)
			o.MaxEjectionTimeJitter, o.EnforcingLocalOriginSuccessRate = time.Second, ptr[uint32](7)
			s.OutlierDetection = &o
		})},
		{"retry_budget", with(func(s *upstream.Settings) {
			s.CircuitBreakers = &breaker.Config{MaxRetries: ptr[uint32](0),
				RetryBudget: &breaker.RetryBudgetConfig{BudgetPercent: ptr(12.5), MinRetryConcurrency: ptr[uint32](1)}}
		})},
		{"http_check", with(func(s *upstream.Settings) {
			s.HealthCheck = &health.Config{HTTP: &health.HTTPCheck{Path: "/h", Host: "api.internal",
				ExpectedStatuses: []health.StatusRange{{Start: 200, End: 400}}, RetriableStatuses: []health.StatusRange{{Start: 503, End: 504}}},
				Interval: time.Second, Timeout: time.Second, UnhealthyThreshold: 1, HealthyThreshold: 1, NoTrafficInterval: time.Minute,
				IntervalJitter: time.Millisecond, IntervalJitterPercent: 5, InitialJitter: 2 * time.Millisecond}
		})},
		{"grpc_check", with(func(s *upstream.Settings) {
			s.HealthCheck = &health.Config{GRPC: &health.GRPCCheck{ServiceName: "s", Authority: "a"}, Interval: time.Second, Timeout: time.Second, UnhealthyThreshold: 1, HealthyThreshold: 1}
		})},
		{"tcp_check", with(func(s *upstream.Settings) {
			s.HealthCheck = &health.Config{TCP: &health.TCPCheck{Send: "PING\r\n", Expect: "PONG"}}
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := DecodeCluster(Cluster(tt.u))
			if err != nil {
				t.Fatal(err)
			}
			if d.EDSName != "api" || d.Service != "api" {
				t.Errorf("EDSName, Service = %q, %q, want api", d.EDSName, d.Service)
			}
			if want := cdsPart(tt.u.Settings); !reflect.DeepEqual(d.Settings, want) {
				t.Errorf("round trip:\n got %s\nwant %s", dump(d.Settings), dump(want))
			}
		})
	}
	// A Cluster without outlier detection, breakers or health checks
	// decodes them as nil: it said nothing about them.
	u := Defaults("api")
	u.Settings.OutlierDetection, u.Settings.CircuitBreakers = nil, nil
	d, err := DecodeCluster(Cluster(u))
	if err != nil {
		t.Fatal(err)
	}
	if s := d.Settings; s.OutlierDetection != nil || s.CircuitBreakers != nil || s.HealthCheck != nil {
		t.Errorf("absent sections decoded as %s", dump(s))
	}
}

func dump(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestLoadAssignmentRoundTrip(t *testing.T) {
	snap := mustSnap(t, "api", 1,
		discovery.Endpoint{Address: "127.0.0.1:1", Weight: 1},
		discovery.Endpoint{Address: "127.0.0.2:2", Weight: discovery.MaxWeight, Health: discovery.Degraded, Meta: map[string]string{"k": "v"}},
		discovery.Endpoint{Address: "127.0.0.3:3", Weight: 7, Health: discovery.Unhealthy},
		discovery.Endpoint{Address: "127.0.0.4:4", Weight: 9, Health: discovery.Draining},
	)
	cla, err := loadAssignment("api", snap)
	if err != nil {
		t.Fatal(err)
	}
	eps, err := DecodeLoadAssignment(cla)
	if err != nil {
		t.Fatal(err)
	}
	got, err := discovery.NewSnapshot("api", 1, eps)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(snap) {
		t.Fatalf("round trip: got %+v, want %+v", got.Endpoints, snap.Endpoints)
	}
}

func TestDecodeRejects(t *testing.T) {
	good := func() *clusterv3.Cluster { return Cluster(Defaults("api")) }
	goodCLA := func() *endpointv3.ClusterLoadAssignment {
		cla, err := loadAssignment("api", mustSnap(t, "api", 1,
			discovery.Endpoint{Address: "127.0.0.1:1", Weight: 1},
			discovery.Endpoint{Address: "127.0.0.1:2", Weight: 2},
			discovery.Endpoint{Address: "127.0.0.1:3", Weight: 3}))
		if err != nil {
			t.Fatal(err)
		}
		return cla
	}
	clusterTests := []struct {
		name   string
		mutate func(*clusterv3.Cluster)
		want   string
	}{
		{"unsupported lb_policy", func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED },
			`Cluster "api": lb_policy CLUSTER_PROVIDED is not supported`},
		{"static cluster", func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
		}, `Cluster "api": discovery type STATIC is not supported (want EDS)`},
		{"eds not over ads", func(c *clusterv3.Cluster) { c.EdsClusterConfig.EdsConfig = nil },
			`eds_config must be ads or self`},
		{"proto validation", func(c *clusterv3.Cluster) { c.OutlierDetection.MaxEjectionPercent.Value = 101 },
			`Cluster "api": invalid Cluster.OutlierDetection`},
		{"choice count", func(c *clusterv3.Cluster) {
			c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
			c.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterv3.Cluster_LeastRequestLbConfig{ChoiceCount: u32(2)}}
			c.GetLeastRequestLbConfig().ChoiceCount.Value = 1
		}, `ChoiceCount: value must be greater than or equal to 2`},
		{"no supported policy", func(c *clusterv3.Cluster) {
			c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
				policy("custom", &clusterv3.Cluster{}),
			}}
		}, `load_balancing_policy lists no policy we support`},
	}
	for _, tt := range clusterTests {
		t.Run("cluster/"+tt.name, func(t *testing.T) {
			c := good()
			tt.mutate(c)
			_, err := DecodeCluster(c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	claTests := []struct {
		name   string
		mutate func(*endpointv3.ClusterLoadAssignment)
		want   string
	}{
		{"zero weight", func(c *endpointv3.ClusterLoadAssignment) { c.Endpoints[0].LbEndpoints[2].LoadBalancingWeight.Value = 0 },
			`ClusterLoadAssignment "api": endpoint 2 (127.0.0.1:3) has load_balancing_weight 0`},
		{"too heavy", func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[1].LoadBalancingWeight.Value = discovery.MaxWeight + 1
		}, `endpoint 1 (127.0.0.1:2) has load_balancing_weight 16777217, more than 16777216`},
		{"port 0", func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().PortSpecifier = nil
		}, `endpoint 0 (127.0.0.1) has port_value 0`},
		{"duplicate", func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[1] = proto.Clone(c.Endpoints[0].LbEndpoints[0]).(*endpointv3.LbEndpoint)
		}, `endpoint 1: duplicate address 127.0.0.1:1`},
		{"hostname", func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().Address = "db.internal"
		}, `endpoint 0 has address "db.internal", want an IP address`},
		{"no name", func(c *endpointv3.ClusterLoadAssignment) { c.ClusterName = "" }, `cluster_name is empty`},
	}
	for _, tt := range claTests {
		t.Run("cla/"+tt.name, func(t *testing.T) {
			c := goodCLA()
			tt.mutate(c)
			_, err := DecodeLoadAssignment(c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// The server groups endpoints into localities by priority, region and
// zone (priorities renumbered densely, locality weight = Σ endpoint
// weights), and the client gets every endpoint back with its priority and
// locality and its own weight.
func TestLocalitiesRoundTrip(t *testing.T) {
	in := []discovery.Endpoint{
		{Address: "127.0.0.1:1", Weight: 2, Region: "dc1", Zone: "a"},
		{Address: "127.0.0.1:2", Weight: 3, Region: "dc1", Zone: "a"},
		{Address: "127.0.0.1:3", Weight: 1, Region: "dc1", Zone: "b"},
		{Address: "127.0.0.1:4", Weight: 1, Region: "dc2", Priority: 2, Health: discovery.Unhealthy},
	}
	cla, err := loadAssignment("api", mustSnap(t, "api", 1, in...))
	if err != nil {
		t.Fatal(err)
	}
	type loc struct {
		prio, weight uint32
		region, zone string
		n            int
	}
	var got []loc
	for _, l := range cla.Endpoints {
		got = append(got, loc{l.Priority, l.LoadBalancingWeight.GetValue(), l.Locality.Region, l.Locality.Zone, len(l.LbEndpoints)})
	}
	want := []loc{{0, 5, "dc1", "a", 2}, {0, 1, "dc1", "b", 1}, {1, 1, "dc2", "", 1}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("localities %+v, want %+v", got, want)
	}
	eps, err := DecodeLoadAssignment(cla)
	if err != nil {
		t.Fatal(err)
	}
	in[3].Priority = 1 // renumbered densely
	if !reflect.DeepEqual(eps, in) {
		t.Fatalf("decoded %+v, want %+v", eps, in)
	}
}

// Locality weights that are not the sums of their endpoints' weights
// reweigh the endpoints: each locality takes its weight's share of its
// priority.
func TestDecodeLocalityWeights(t *testing.T) {
	cla, err := loadAssignment("api", mustSnap(t, "api", 1,
		discovery.Endpoint{Address: "127.0.0.1:1", Weight: 1, Zone: "a"},
		discovery.Endpoint{Address: "127.0.0.1:2", Weight: 1, Zone: "a"},
		discovery.Endpoint{Address: "127.0.0.1:3", Weight: 1, Zone: "b"},
		discovery.Endpoint{Address: "127.0.0.1:4", Weight: 5, Zone: "c", Priority: 1}))
	if err != nil {
		t.Fatal(err)
	}
	// Zone a (2 endpoints) weighs 1, zone b (1 endpoint) weighs 3: b takes
	// 75 %, each endpoint of a 12.5 %.
	cla.Endpoints[0].LoadBalancingWeight.Value = 1
	cla.Endpoints[1].LoadBalancingWeight.Value = 3
	eps, err := DecodeLoadAssignment(cla)
	if err != nil {
		t.Fatal(err)
	}
	w := map[string]uint32{}
	for _, ep := range eps {
		w[ep.Address] = ep.Weight
	}
	if r := float64(w["127.0.0.1:3"]) / float64(w["127.0.0.1:1"]); w["127.0.0.1:1"] != w["127.0.0.1:2"] || math.Abs(r-6) > 0.05 {
		t.Fatalf("weights %v, want zone b's endpoint at 6 times each of zone a's", w)
	}
	if w["127.0.0.1:4"] != 5 {
		t.Fatalf("weights %v: the priority-1 endpoint (alone in its priority) keeps its weight 5", w)
	}
}

// BenchmarkResources translates 100 services of 10 endpoints each, the
// work behind one snapshot version.
func BenchmarkResources(b *testing.B) {
	settings := make([]Upstream, 100)
	snaps := map[string]*discovery.Snapshot{}
	for i := range settings {
		svc := "svc-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + string(rune('a'+i/26))
		settings[i] = Defaults(svc)
		var eps []discovery.Endpoint
		for j := range 10 {
			eps = append(eps, discovery.Endpoint{Address: "10.0." + string(rune('0'+i%10)) + "." + string(rune('0'+j)) + ":8080", Weight: uint32(j + 1)})
		}
		s, err := discovery.NewSnapshot(svc, 1, eps)
		if err != nil {
			b.Fatal(err)
		}
		snaps[svc] = s
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Resources(settings, snaps); err != nil {
			b.Fatal(err)
		}
	}
}
