package consul

import (
	"net"
	"sort"
	"strconv"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
)

// MaxWeight is the largest weight taken from Consul: like Consul's own xDS
// server (agent/xds/endpoints.go), weights are clamped to 1..128.
const MaxWeight = 128

// endpointOf maps one instance to an endpoint the way Consul maps it for
// Envoy (agent/xds/endpoints.go, calculateEndpointHealthAndWeight):
//
//   - weights default to {Passing: 1, Warning: 1} (an instance that reports
//     both as 0 predates weights);
//   - every check passing: Weights.Passing, healthy;
//   - any check warning (none critical): Weights.Warning, degraded;
//   - any check critical, in maintenance or in a state Consul does not
//     document: unhealthy at its Passing weight (kept, so that it counts
//     in its priority level's size; the sidecar never sends it traffic,
//     not even in panic mode);
//   - a weight below 1 excludes the instance (Consul marks it unhealthy);
//     a weight above 128 becomes 128.
//
// The address is Service.Address, else Node.Address. Region is the node's
// datacenter; Zone is Service.Meta["zone"], else the node meta "zone".
// ok is false when the instance is excluded or has no usable address.
func endpointOf(e *api.ServiceEntry) (ep discovery.Endpoint, ok bool) {
	if e == nil || e.Service == nil || e.Service.Port <= 0 || e.Service.Port > 65535 {
		return ep, false
	}
	host := e.Service.Address
	if host == "" && e.Node != nil {
		host = e.Node.Address
	}
	if host == "" {
		return ep, false
	}
	w := e.Service.Weights
	if w.Passing == 0 && w.Warning == 0 {
		w = api.AgentWeights{Passing: 1, Warning: 1}
	}
	weight, health := w.Passing, discovery.Healthy
	for _, c := range e.Checks {
		switch c.Status {
		case api.HealthPassing:
		case api.HealthWarning:
			if health == discovery.Healthy {
				weight, health = w.Warning, discovery.Degraded
			}
		default:
			weight, health = max(w.Passing, 1), discovery.Unhealthy
		}
	}
	if weight < 1 {
		return ep, false
	}
	weight = min(weight, MaxWeight)
	ep = discovery.Endpoint{
		Address: net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
		Weight:  uint32(weight),
		Health:  health,
	}
	if e.Node != nil {
		ep.Region = e.Node.Datacenter
		ep.Zone = e.Node.Meta["zone"]
	}
	if z := e.Service.Meta["zone"]; z != "" {
		ep.Zone = z
	}
	if len(e.Service.Meta) > 0 {
		ep.Meta = make(map[string]string, len(e.Service.Meta))
		for k, v := range e.Service.Meta {
			ep.Meta[k] = v
		}
	}
	ep.MTLS = e.Service.Meta[discovery.MetaMTLS] == "true"
	return ep, true
}

// endpointsOf maps a health query's result to endpoints. Two instances at
// one address (registered under two IDs or on two nodes) become one
// endpoint carrying the sum of their weights (capped at discovery.MaxWeight),
// which sends the address the share Envoy would give the pair; it is
// healthy if either is, and keeps the meta of the lowest service ID.
func endpointsOf(entries []*api.ServiceEntry) []discovery.Endpoint {
	sorted := make([]*api.ServiceEntry, 0, len(entries))
	for _, e := range entries {
		if e != nil && e.Service != nil {
			sorted = append(sorted, e)
		}
	}
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Service.ID < sorted[j].Service.ID })
	out := make([]discovery.Endpoint, 0, len(sorted))
	at := make(map[string]int, len(sorted))
	for _, e := range sorted {
		ep, ok := endpointOf(e)
		if !ok {
			continue
		}
		i, dup := at[ep.Address]
		if !dup {
			at[ep.Address] = len(out)
			out = append(out, ep)
			continue
		}
		prev := &out[i]
		switch {
		case prev.Health == discovery.Unhealthy && ep.Health != discovery.Unhealthy:
			prev.Weight, prev.Health = ep.Weight, ep.Health // the critical one takes no share
			continue
		case prev.Health != discovery.Unhealthy && ep.Health == discovery.Unhealthy:
			continue
		}
		prev.Weight = uint32(min(uint64(prev.Weight)+uint64(ep.Weight), discovery.MaxWeight))
		if ep.Health < prev.Health {
			prev.Health = ep.Health
		}
	}
	return out
}
