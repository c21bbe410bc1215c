package sidecar

import (
	"math/rand/v2"
	"sort"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
)

// zoneShares is Envoy's zone-aware routing for one priority level, seen
// from a sidecar in zone local. upstream counts the level's healthy hosts
// per zone; origin counts the hosts of the local cluster (the sidecar's
// own service) per zone. With upstream(z) and origin(z) the zones' shares
// of each:
//
//   - upstream(local) >= origin(local): all traffic stays in the local
//     zone (it has at least its fair share of the capacity);
//   - else the local zone keeps upstream(local) / origin(local) of the
//     traffic and the rest spills to the other zones in proportion to
//     their residual capacity, max(0, upstream(z) - origin(z)).
//
// It returns each zone's share of the traffic (summing to 1) and whether
// everything stays local.
func zoneShares(local string, upstream, origin map[string]int) (map[string]float64, bool) {
	uTotal, oTotal := 0, 0
	for _, n := range upstream {
		uTotal += n
	}
	for _, n := range origin {
		oTotal += n
	}
	out := map[string]float64{}
	if uTotal == 0 {
		return out, false
	}
	up := func(z string) float64 { return float64(upstream[z]) / float64(uTotal) }
	or := func(z string) float64 {
		if oTotal == 0 {
			return 0
		}
		return float64(origin[z]) / float64(oTotal)
	}
	if upstream[local] > 0 && up(local) >= or(local) {
		out[local] = 1
		return out, true
	}
	keep := 0.0
	if or(local) > 0 {
		keep = up(local) / or(local)
	}
	if keep > 0 {
		out[local] = keep
	}
	residual, sum := map[string]float64{}, 0.0
	for z := range upstream {
		if z == local || upstream[z] == 0 {
			continue
		}
		if r := up(z) - or(z); r > 0 {
			residual[z] = r
			sum += r
		}
	}
	if sum == 0 { // no zone has spare capacity: spread by capacity
		for z := range upstream {
			if z != local && upstream[z] > 0 {
				residual[z] = up(z)
				sum += up(z)
			}
		}
	}
	for z, r := range residual {
		out[z] = (1 - keep) * r / sum
	}
	return out, false
}

// zonePick is one zone of a zone-routed level.
type zonePick struct {
	zone   string
	picker balancer.Picker
	hosts  []*Host
	share  float64 // of the level's traffic, 0..1
}

// zoneRoute is the zone-aware routing of one level (nil: off).
type zoneRoute struct {
	allLocal bool
	zones    []zonePick // the local zone first, then by name
	cum      []uint64   // cumulative shares scaled to 2^32
}

// pick chooses a zone by its share and picks in it.
func (zr *zoneRoute) pick(info *balancer.PickInfo) (*Host, string, bool) {
	var r uint32
	if info != nil && info.HasHash {
		r = uint32(info.Hash)
	} else {
		r = rand.Uint32()
	}
	zi := len(zr.zones) - 1
	for i, c := range zr.cum {
		if uint64(r) < c {
			zi = i
			break
		}
	}
	z := &zr.zones[zi]
	i := z.picker.Pick(info)
	if i < 0 {
		return nil, "", false
	}
	return z.hosts[i], z.zone, true
}

// setOrigin sets the local cluster's hosts per zone (the sidecar's own
// service, for zone-aware routing) and rebuilds.
func (c *Cluster) setOrigin(origin map[string]int) {
	c.mu.Lock()
	c.origin = origin
	c.mu.Unlock()
	c.rebuild()
}

// ZoneStatus is the /clusters view of zone-aware routing in one level.
type ZoneStatus struct {
	LocalZone string `json:"local_zone"`
	// State is "all_local", "spill" (the local zone keeps part, the rest
	// spills by residual capacity) or why routing is off.
	State  string             `json:"state"`
	Shares map[string]float64 `json:"shares,omitempty"`
}

// zoneRouteFor builds the zone routing of a level balancing over use, or
// says why there is none. origin is the local cluster's hosts per zone
// (nil: unknown; the level's own hosts per zone stand for it). The caller
// holds mu.
func (c *Cluster) zoneRouteFor(g, use []*Host, panicking bool, origin map[string]int, now time.Time, ramping bool) (*zoneRoute, ZoneStatus, error) {
	st := ZoneStatus{LocalZone: c.localZone}
	minSize := 6
	if n := c.eff.ZoneAwareMinClusterSize; n != nil {
		minSize = *n
	}
	switch {
	case panicking:
		st.State = "off: panic mode"
		return nil, st, nil
	case len(g) < minSize:
		st.State = "off: fewer hosts than zone_aware_min_cluster_size"
		return nil, st, nil
	}
	upstream := map[string]int{}
	byZone := map[string][]*Host{}
	for _, h := range use {
		upstream[h.zone]++
		byZone[h.zone] = append(byZone[h.zone], h)
	}
	if origin == nil {
		origin = map[string]int{}
		for _, h := range g {
			origin[h.zone]++
		}
	}
	shares, allLocal := zoneShares(c.localZone, upstream, origin)
	st.Shares = shares
	st.State = "spill"
	if allLocal {
		st.State = "all_local"
	}
	zones := make([]string, 0, len(shares))
	for z, s := range shares {
		if s > 0 {
			zones = append(zones, z)
		}
	}
	if len(zones) == 0 {
		st.State = "off: no healthy host"
		return nil, st, nil
	}
	sort.Slice(zones, func(i, j int) bool {
		if (zones[i] == c.localZone) != (zones[j] == c.localZone) {
			return zones[i] == c.localZone
		}
		return zones[i] < zones[j]
	})
	zr := &zoneRoute{allLocal: allLocal}
	loads := make([]float64, len(zones))
	for i, z := range zones {
		p, _, err := c.levelPicker(byZone[z], now, ramping)
		if err != nil {
			return nil, st, err
		}
		zr.zones = append(zr.zones, zonePick{zone: z, picker: p, hosts: byZone[z], share: shares[z]})
		loads[i] = shares[z]
	}
	zr.cum = cumulative(loads)
	return zr, st, nil
}

// originZones counts the healthy priority-0 instances of the local
// cluster per zone.
func originZones(s *discovery.Snapshot) map[string]int {
	out := map[string]int{}
	for _, ep := range s.Endpoints {
		if ep.Priority == 0 && ep.Health != discovery.Unhealthy && ep.Health != discovery.Draining {
			out[ep.Zone]++
		}
	}
	return out
}

// watchOrigin follows the sidecar's own service through the discovery
// source, as Envoy's local cluster: its instances per zone are the origin
// zone-aware routing compares the upstreams' spread with.
func (s *Sidecar) watchOrigin() {
	if s.cfg.Service == nil || s.src == nil {
		return
	}
	var zoned []*Cluster
	for _, c := range s.clusters {
		if c.cfg.ZoneAware {
			zoned = append(zoned, c)
		}
	}
	if len(zoned) == 0 {
		return
	}
	cancel := s.src.Watch(s.cfg.Service.Name, discovery.WatcherFuncs{Update: func(snap *discovery.Snapshot) {
		origin := originZones(snap)
		for _, c := range zoned {
			c.setOrigin(origin)
		}
	}})
	s.closers = append(s.closers, cancel)
}
