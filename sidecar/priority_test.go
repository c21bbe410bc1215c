package sidecar

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"reflect"
	"testing"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
)

func TestPlanPriorities(t *testing.T) {
	tests := []struct {
		name       string
		levels     []levelCount
		load       []float64
		panic      []bool
		totalPanic bool
	}{
		{"half of P0 healthy: 1.4 x 50 % stays", []levelCount{{2, 4}, {4, 4}}, []float64{70, 30}, []bool{false, false}, false},
		{"P0 down: all to P1, no panic", []levelCount{{0, 4}, {4, 4}}, []float64{0, 100}, []bool{false, false}, false},
		{"P0 at 75 % keeps everything", []levelCount{{3, 4}, {4, 4}}, []float64{100, 0}, []bool{false, false}, false},
		{"both partly healthy, enough in sum", []levelCount{{2, 10}, {6, 10}}, []float64{28, 72}, []bool{false, false}, false},
		{"one level below the threshold", []levelCount{{1, 4}}, []float64{100}, []bool{true}, true},
		{"one level at 40 % (below 50, health 56 < 100)", []levelCount{{2, 5}}, []float64{100}, []bool{true}, true},
		{"one level at 60 %: no panic", []levelCount{{3, 5}}, []float64{100}, []bool{false}, false},
		{"every level in panic: load by host count", []levelCount{{1, 4}, {1, 12}}, []float64{25, 75}, []bool{true, true}, true},
		{"P0 in its own panic, P1 not", []levelCount{{1, 5}, {5, 10}}, []float64{28 * 100 / 98.0, 70 * 100 / 98.0}, []bool{true, false}, false},
		{"nothing healthy anywhere", []levelCount{{0, 2}, {0, 2}}, []float64{50, 50}, []bool{true, true}, true},
		{"no hosts", nil, []float64{}, []bool{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := planPriorities(tc.levels, 50)
			if len(p.Load) != len(tc.load) {
				t.Fatalf("loads %v, want %v", p.Load, tc.load)
			}
			sum := 0.0
			for i := range tc.load {
				if math.Abs(p.Load[i]-tc.load[i]) > 1e-9 {
					t.Fatalf("loads %v, want %v (health %v)", p.Load, tc.load, p.Health)
				}
				if p.Panic[i] != tc.panic[i] {
					t.Fatalf("panic %v, want %v", p.Panic, tc.panic)
				}
				sum += p.Load[i]
			}
			if len(tc.load) > 0 && math.Abs(sum-100) > 1e-9 {
				t.Fatalf("loads %v sum to %v", p.Load, sum)
			}
			if p.TotalPanic != tc.totalPanic {
				t.Fatalf("total panic %v, want %v", p.TotalPanic, tc.totalPanic)
			}
		})
	}
}

// priorityCluster is a cluster over eps with no outlier detection.
func priorityCluster(t *testing.T, eps []discovery.Endpoint) *Cluster {
	t.Helper()
	u := &Upstream{Service: "api"}
	u.SetDefaults()
	c := newCluster(u, newMetrics(), nil, slog.New(slog.DiscardHandler))
	c.start(nil)
	t.Cleanup(c.close)
	snap, err := discovery.NewSnapshot("api", 1, eps)
	if err != nil {
		t.Fatal(err)
	}
	c.onUpdate(snap)
	return c
}

// levelShares picks with n hash values spread evenly over the hash space
// (a hashed pick chooses its level by the hash) and returns the share of
// picks per priority: deterministic, no sampling noise beyond 1/n.
func levelShares(t *testing.T, c *Cluster, n int) map[uint32]float64 {
	t.Helper()
	st := c.state.Load()
	got := map[uint32]float64{}
	for i := range n {
		info := &balancer.PickInfo{Hash: uint64(i) * (math.MaxUint64 / uint64(n)), HasHash: true}
		got[st.chooseLevel(info).priority] += 1 / float64(n)
	}
	return got
}

// Half of priority 0 unhealthy in Consul: priority 0 takes 70 %, priority 1
// the remaining 30 %, and the critical instances are never picked.
func TestClusterPriorityLoad(t *testing.T) {
	var eps []discovery.Endpoint
	for i := range 4 {
		h := discovery.Healthy
		if i < 2 {
			h = discovery.Unhealthy
		}
		eps = append(eps, discovery.Endpoint{Address: fmt.Sprintf("127.0.0.%d:80", i+1), Weight: 1, Health: h})
		eps = append(eps, discovery.Endpoint{Address: fmt.Sprintf("127.0.1.%d:80", i+1), Weight: 1, Priority: 1})
	}
	c := priorityCluster(t, eps)
	shares := levelShares(t, c, 10000)
	if math.Abs(shares[0]-0.7) > 0.001 || math.Abs(shares[1]-0.3) > 0.001 {
		t.Fatalf("level shares %v, want 0.7 / 0.3", shares)
	}
	for range 1000 {
		p, err := c.pick(&balancer.PickInfo{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if p.Host.Addr == "127.0.0.1:80" || p.Host.Addr == "127.0.0.2:80" {
			t.Fatalf("picked %s, which Consul reports critical", p.Host.Addr)
		}
		if p.Panic {
			t.Fatal("pick in panic mode")
		}
		p.Done(DoneInfo{})
	}
	cs := c.Status()
	if len(cs.Priorities) != 2 || cs.Priorities[0].LoadPercent != 70 || cs.Priorities[0].Health != 70 ||
		cs.Priorities[0].HealthyPercent != 50 || cs.Priorities[1].LoadPercent != 30 {
		t.Fatalf("/clusters priorities %+v", cs.Priorities)
	}
	if got, want := priorityLoads(t, c), map[string]float64{"0": 0.7, "1": 0.3}; !reflect.DeepEqual(got, want) {
		t.Errorf("sidemesh_upstream_priority_load %v, want %v", got, want)
	}
	// Priority 1 goes away: its series goes with it.
	var p0 []discovery.Endpoint
	for _, ep := range eps {
		if ep.Priority == 0 {
			p0 = append(p0, ep)
		}
	}
	snap, _ := discovery.NewSnapshot("api", 2, p0)
	c.onUpdate(snap)
	if got, want := priorityLoads(t, c), map[string]float64{"0": 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("sidemesh_upstream_priority_load %v after priority 1 left, want %v", got, want)
	}
}

// priorityLoads gathers sidemesh_upstream_priority_load by priority.
func priorityLoads(t *testing.T, c *Cluster) map[string]float64 {
	t.Helper()
	mfs, err := c.m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "sidemesh_upstream_priority_load" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "priority" {
					out[l.GetValue()] = math.Round(m.GetGauge().GetValue()*1e9) / 1e9
				}
			}
		}
	}
	return out
}

// Every priority-0 endpoint unhealthy: priority 1 takes all, no panic.
func TestClusterPriorityFailover(t *testing.T) {
	eps := []discovery.Endpoint{
		{Address: "127.0.0.1:80", Weight: 1, Health: discovery.Unhealthy},
		{Address: "127.0.0.2:80", Weight: 1, Health: discovery.Unhealthy},
		{Address: "127.0.1.1:80", Weight: 1, Priority: 1},
	}
	c := priorityCluster(t, eps)
	for range 200 {
		p, err := c.pick(&balancer.PickInfo{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if p.Host.Addr != "127.0.1.1:80" || p.Panic {
			t.Fatalf("picked %s (panic %v), want the priority-1 endpoint", p.Host.Addr, p.Panic)
		}
		p.Done(DoneInfo{})
	}
}

// A Consul-critical instance counts in its level's size but is never picked,
// not even in panic mode.
func TestClusterCriticalNeverPickedInPanic(t *testing.T) {
	eps := []discovery.Endpoint{
		{Address: "127.0.0.1:80", Weight: 1, Health: discovery.Unhealthy},
		{Address: "127.0.0.2:80", Weight: 1, Health: discovery.Unhealthy},
		{Address: "127.0.0.3:80", Weight: 1, Health: discovery.Unhealthy},
		{Address: "127.0.0.4:80", Weight: 1, Health: discovery.Draining},
	}
	c := priorityCluster(t, eps)
	if !c.Status().Panic {
		t.Fatal("no panic mode with every endpoint unhealthy")
	}
	for range 200 {
		p, err := c.pick(&balancer.PickInfo{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if p.Host.Addr != "127.0.0.4:80" {
			t.Fatalf("picked %s in panic mode, which Consul reports critical", p.Host.Addr)
		}
		p.Done(DoneInfo{})
	}
	c2 := priorityCluster(t, eps[:3])
	if _, err := c2.pick(&balancer.PickInfo{}, nil); !errors.Is(err, ErrNoHealthyUpstream) {
		t.Fatalf("every endpoint critical: err %v, want ErrNoHealthyUpstream", err)
	}
}

func TestCumulative(t *testing.T) {
	cum := cumulative([]float64{0, 70, 30})
	if cum[0] != 0 || cum[1] != uint64(math.Round(0.7*(1<<32))) || cum[2] != 1<<32 {
		t.Fatalf("cumulative %v", cum)
	}
}
