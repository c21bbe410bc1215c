package xds

import (
	"context"
	"fmt"
	"sort"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sidemesh/sidemesh/discovery"
)

// deltaRes is one resource as last received on a delta stream.
type deltaRes struct {
	version string
	res     *anypb.Any
}

// streamDelta runs one delta (incremental) ADS stream until it fails or
// the client closes; received says whether any response arrived. The
// client subscribes exactly its services' names and follows
// Watch/cancel with resource_names_subscribe/unsubscribe; a response
// carries only what changed (an endpoint change: that one assignment).
// A new stream presents the versions it holds (initial_resource_versions),
// so a server with the same content (another replica) sends nothing.
//
// The responses are applied through the state-of-the-world handlers: the
// received Clusters are kept per name and handed over whole (absence is a
// deletion there), the received assignments only as they change.
func (c *Client) streamDelta() (received bool, err error) {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	st, err := c.ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return false, err
	}

	sent := map[string]map[string]bool{} // type → names subscribed on this stream
	first := true
	node := func() *corev3.Node {
		if !first {
			return nil
		}
		first = false
		return &corev3.Node{Id: c.cfg.NodeID, Cluster: c.cfg.Cluster, UserAgentName: "sidemesh"}
	}
	// resubscribe sends, per type, the names added and removed since the
	// last request on this stream (on a new stream: all, with the
	// versions held).
	resubscribe := func() error {
		for _, t := range clientTypes {
			want := c.names(t)
			have := sent[t]
			var add, drop []string
			for _, n := range want {
				if !have[n] {
					add = append(add, n)
				}
			}
			wantSet := make(map[string]bool, len(want))
			for _, n := range want {
				wantSet[n] = true
			}
			for n := range have {
				if !wantSet[n] {
					drop = append(drop, n)
				}
			}
			if have != nil && len(add) == 0 && len(drop) == 0 {
				continue
			}
			if have == nil && len(want) == 0 {
				continue // nothing to ask for yet (an empty first request is a wildcard)
			}
			sort.Strings(drop)
			req := &discoveryv3.DeltaDiscoveryRequest{Node: node(), TypeUrl: t,
				ResourceNamesSubscribe: add, ResourceNamesUnsubscribe: drop}
			if have == nil {
				req.InitialResourceVersions = map[string]string{}
				for _, n := range add {
					if r := c.known[t][n]; r != nil {
						req.InitialResourceVersions[n] = r.version
					}
				}
			}
			for _, n := range drop {
				delete(c.known[t], n)
			}
			if err := st.Send(req); err != nil {
				return err
			}
			sent[t] = wantSet
		}
		return nil
	}
	return streamLoop(c, cancel, st.Recv, resubscribe,
		func(cs *ClientStats) {
			cs.Connected, cs.Delta = true, true
			cs.Streams++
		}, "xDS stream up (delta)",
		func(resp *discoveryv3.DeltaDiscoveryResponse) error {
			t := resp.GetTypeUrl()
			if _, ok := sent[t]; !ok {
				c.log.Warn("delta response of a type never requested ignored", "type", t)
				return nil
			}
			errs := c.handleDelta(resp)
			var detail *statuspb.Status
			if len(errs) > 0 {
				detail = nackStatus(errs)
			}
			c.recordStats(t, resp.GetSystemVersionInfo(), resp.GetNonce(), detail)
			return st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce(), ErrorDetail: detail})
		})
}

// handleDelta applies one delta response through the SotW handlers.
func (c *Client) handleDelta(resp *discoveryv3.DeltaDiscoveryResponse) []error {
	t := resp.GetTypeUrl()
	known := c.known[t]
	if known == nil {
		known = map[string]*deltaRes{}
		c.known[t] = known
	}
	changed := make([]*anypb.Any, 0, len(resp.GetResources()))
	for _, r := range resp.GetResources() {
		if r.GetResource() == nil {
			continue
		}
		known[r.GetName()] = &deltaRes{version: r.GetVersion(), res: r.GetResource()}
		changed = append(changed, r.GetResource())
	}
	for _, name := range resp.GetRemovedResources() {
		delete(known, name)
	}
	full := &discoveryv3.DiscoveryResponse{TypeUrl: t, VersionInfo: resp.GetSystemVersionInfo(), Nonce: resp.GetNonce()}
	switch t {
	case resource.ClusterType:
		names := make([]string, 0, len(known))
		for n := range known {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			full.Resources = append(full.Resources, known[n].res)
		}
	default:
		full.Resources = changed
	}
	errs := c.handle(full)
	if t == resource.EndpointType {
		// A removed assignment empties its services' endpoints.
		for _, name := range resp.GetRemovedResources() {
			c.dropEndpoints(name)
		}
	}
	return errs
}

// dropEndpoints is a removed ClusterLoadAssignment: its services' watchers
// get a resource error.
func (c *Client) dropEndpoints(name string) {
	c.mu.Lock()
	var svcs []string
	for svc := range c.services {
		n := svc
		if e, ok := c.edsNames[svc]; ok {
			n = e
		}
		if n == name {
			svcs = append(svcs, svc)
		}
	}
	c.mu.Unlock()
	sort.Strings(svcs)
	for _, svc := range svcs {
		if c.snaps[svc] == nil {
			continue
		}
		delete(c.snaps, svc)
		c.fan.ResourceError(svc, fmt.Errorf("%w: ClusterLoadAssignment %q removed by xds server %s", discovery.ErrNotFound, name, c.cfg.Address.String()))
	}
}
