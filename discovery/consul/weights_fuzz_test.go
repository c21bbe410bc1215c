package consul

import (
	"net"
	"sort"
	"strconv"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
)

// fuzzEntries turns bytes into health entries, 6 bytes an instance: service
// ID, address, port, passing and warning weights (-8..247), check states.
func fuzzEntries(data []byte) []*api.ServiceEntry {
	addrs := []string{"", "127.0.0.1", "::1", "198.18.0.2"}
	ports := []int{7001, 7002, 0, -1, 1, 65535, 65536}
	states := []string{api.HealthPassing, api.HealthWarning, api.HealthCritical, api.HealthMaint, "", "bogus"}
	var out []*api.ServiceEntry
	for len(data) >= 6 {
		b := data[:6]
		data = data[6:]
		e := &api.ServiceEntry{Service: &api.AgentService{
			ID:      "i" + strconv.Itoa(int(b[0]%5)),
			Service: "api",
			Address: addrs[b[1]%4],
			Port:    ports[int(b[2])%len(ports)],
			Weights: api.AgentWeights{Passing: int(b[3]) - 8, Warning: int(b[4]) - 8},
			Meta:    map[string]string{"id": strconv.Itoa(int(b[0]))},
		}}
		if b[1]&4 != 0 {
			e.Node = &api.Node{Node: "n", Address: "198.18.0.9"}
		}
		for c := b[5]; c != 0; c /= 7 {
			e.Checks = append(e.Checks, &api.HealthCheck{Status: states[int(c%7)%len(states)]})
		}
		out = append(out, e)
	}
	return out
}

// modelEndpoint restates Consul's mapping (see endpointOf) case by case.
func modelEndpoint(e *api.ServiceEntry) (addr string, weight int, health discovery.Health, ok bool) {
	s := e.Service
	if s.Port < 1 || s.Port > 65535 {
		return "", 0, 0, false
	}
	host := s.Address
	if host == "" && e.Node != nil {
		host = e.Node.Address
	}
	if host == "" {
		return "", 0, 0, false
	}
	passing, warning := s.Weights.Passing, s.Weights.Warning
	if passing == 0 && warning == 0 {
		passing, warning = 1, 1
	}
	anyWarning, anyCritical := false, false
	for _, c := range e.Checks {
		switch c.Status {
		case api.HealthPassing:
		case api.HealthWarning:
			anyWarning = true
		default:
			anyCritical = true
		}
	}
	weight, health = passing, discovery.Healthy
	if anyCritical {
		return net.JoinHostPort(host, strconv.Itoa(s.Port)), min(max(passing, 1), MaxWeight), discovery.Unhealthy, true
	}
	if anyWarning {
		weight, health = warning, discovery.Degraded
	}
	if weight < 1 {
		return "", 0, 0, false
	}
	return net.JoinHostPort(host, strconv.Itoa(s.Port)), min(weight, MaxWeight), health, true
}

func FuzzEndpointsOf(f *testing.F) {
	f.Add([]byte{0, 1, 0, 9, 9, 0})                      // one passing instance, weight 1
	f.Add([]byte{0, 1, 0, 11, 9, 1, 1, 1, 0, 200, 9, 2}) // two instances at one address: weights add
	f.Add([]byte{2, 2, 1, 255, 0, 8})                    // IPv6, weight above 128, a warning check
	f.Add([]byte{3, 4, 3, 8, 8, 3})                      // node address, critical check
	f.Add([]byte{4, 0, 5, 0, 12, 0, 1, 1, 6, 9, 9, 5})
	f.Fuzz(func(t *testing.T, data []byte) {
		entries := fuzzEntries(data)
		got := endpointsOf(entries)

		type agg struct {
			weight  int
			health  discovery.Health
			meta    string
			firstID string
		}
		want := map[string]*agg{}
		sorted := append([]*api.ServiceEntry(nil), entries...)
		sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Service.ID < sorted[j].Service.ID })
		var order []string
		for _, e := range sorted {
			addr, w, h, ok := modelEndpoint(e)
			if !ok {
				continue
			}
			a := want[addr]
			if a == nil {
				a = &agg{meta: e.Service.Meta["id"], firstID: e.Service.ID}
				want[addr] = a
				order = append(order, addr)
			}
			switch {
			case a.health == discovery.Unhealthy && a.weight > 0 && h != discovery.Unhealthy:
				a.weight, a.health = w, h
			case a.weight > 0 && a.health != discovery.Unhealthy && h == discovery.Unhealthy:
			default:
				if a.weight == 0 || h < a.health {
					a.health = h
				}
				a.weight = min(a.weight+w, discovery.MaxWeight)
			}
		}
		if len(got) != len(order) {
			t.Fatalf("got %d endpoints %+v, want %d at %v", len(got), got, len(order), order)
		}
		for i, ep := range got {
			a := want[order[i]]
			if ep.Address != order[i] || int(ep.Weight) != a.weight || ep.Health != a.health || ep.Meta["id"] != a.meta {
				t.Fatalf("endpoint %d: got %+v, want %s weight %d health %v meta %s", i, ep, order[i], a.weight, a.health, a.meta)
			}
			if ep.Health != discovery.Healthy && ep.Health != discovery.Degraded && ep.Health != discovery.Unhealthy {
				t.Fatalf("endpoint %d: health %v", i, ep.Health)
			}
			if err := discovery.ValidateEndpoint(ep); err != nil {
				t.Fatalf("endpoint %d is invalid: %v", i, err)
			}
		}
	})
}
