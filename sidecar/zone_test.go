package sidecar

import (
	"fmt"
	"log/slog"
	"math"
	"testing"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
)

// Three zones, unequal upstream counts (a:1, b:2, c:3), the local cluster
// spread evenly: worked by hand from Envoy's algorithm.
func TestZoneShares(t *testing.T) {
	upstream := map[string]int{"a": 1, "b": 2, "c": 3}
	even := map[string]int{"a": 3, "b": 3, "c": 3}
	tests := []struct {
		name, local    string
		upstream, orig map[string]int
		want           map[string]float64
		allLocal       bool
	}{
		// a: upstream 1/6 < origin 1/3 → keep (1/6)/(1/3) = 1/2; residual
		// b: 2/6 − 1/3 = 0, c: 3/6 − 1/3 = 1/6 → c takes the other half.
		{"short zone spills to the zone with spare capacity", "a", upstream, even, map[string]float64{"a": 0.5, "c": 0.5}, false},
		// b: upstream 1/3 ≥ origin 1/3: all local.
		{"zone with its fair share stays local", "b", upstream, even, map[string]float64{"b": 1}, true},
		{"zone with more than its share stays local", "c", upstream, even, map[string]float64{"c": 1}, true},
		// origin a:1 b:1 c:2 (a 1/4, b 1/4, c 1/2); upstream a:1 b:2 c:3
		// (1/6, 1/3, 1/2): a keeps (1/6)/(1/4) = 2/3; residual b 1/12, c 0.
		{"spill goes by residual capacity", "a", upstream, map[string]int{"a": 1, "b": 1, "c": 2}, map[string]float64{"a": 2.0 / 3, "b": 1.0 / 3}, false},
		// No healthy host in the local zone: everything spills, by residual.
		{"local zone empty", "a", map[string]int{"b": 2, "c": 4}, even, map[string]float64{"c": 1}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, all := zoneShares(tc.local, tc.upstream, tc.orig)
			if all != tc.allLocal || len(got) != len(tc.want) {
				t.Fatalf("shares %v (all local %v), want %v (%v)", got, all, tc.want, tc.allLocal)
			}
			for z, w := range tc.want {
				if math.Abs(got[z]-w) > 1e-9 {
					t.Fatalf("shares %v, want %v", got, w)
				}
			}
		})
	}
}

// A zone_aware cluster in zone a routes by those shares; below
// zone_aware_min_cluster_size it ignores zones.
func TestClusterZoneRouting(t *testing.T) {
	var eps []discovery.Endpoint
	n := 0
	for _, zc := range []struct {
		zone  string
		count int
	}{{"a", 1}, {"b", 2}, {"c", 3}} {
		for range zc.count {
			n++
			eps = append(eps, discovery.Endpoint{Address: fmt.Sprintf("127.0.0.%d:80", n), Weight: 1, Zone: zc.zone})
		}
	}
	u := &Upstream{Service: "api"}
	u.ZoneAware = true
	u.SetDefaults()
	c := newCluster(u, newMetrics(), nil, slog.New(slog.DiscardHandler))
	c.localZone = "a"
	c.origin = map[string]int{"a": 3, "b": 3, "c": 3}
	c.start(nil)
	defer c.close()
	snap, err := discovery.NewSnapshot("api", 1, eps)
	if err != nil {
		t.Fatal(err)
	}
	c.onUpdate(snap)
	// Hash-driven picks over evenly spread hashes: the zone is chosen by
	// the hash's low half, so the split is exact up to 1/N.
	const N = 6000
	byZone := map[string]int{}
	for i := range N {
		p, err := c.pick(&balancer.PickInfo{Hash: uint64(i) * (math.MaxUint32 / N), HasHash: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		byZone[p.Zone]++
		p.Done(DoneInfo{})
	}
	if math.Abs(float64(byZone["a"])/N-0.5) > 0.001 || math.Abs(float64(byZone["c"])/N-0.5) > 0.001 || byZone["b"] != 0 {
		t.Fatalf("picks by zone %v, want a 50 %%, c 50 %%, b none", byZone)
	}
	zs := c.Status().Priorities[0].ZoneRouting
	if zs == nil || zs.State != "spill" || zs.LocalZone != "a" || math.Abs(zs.Shares["a"]-0.5) > 1e-9 {
		t.Fatalf("/clusters zone routing %+v", zs)
	}

	// Five hosts are fewer than min_cluster_size 6: zones are ignored.
	snap2, _ := discovery.NewSnapshot("api", 2, eps[:5])
	c.onUpdate(snap2)
	if zs := c.Status().Priorities[0].ZoneRouting; zs == nil || zs.State != "off: fewer hosts than zone_aware_min_cluster_size" {
		t.Fatalf("/clusters zone routing %+v with 5 hosts", zs)
	}
	if st := c.state.Load(); st.levels[0].zr != nil {
		t.Fatal("zone routing on below min_cluster_size")
	}
}
