package consul

import (
	"reflect"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
)

// entry builds a health entry; statuses are the states of its checks.
func entry(id, addr string, port, passing, warning int, statuses ...string) *api.ServiceEntry {
	e := &api.ServiceEntry{
		Node:    &api.Node{Node: "n1", Address: "198.18.0.1"},
		Service: &api.AgentService{ID: id, Service: "api", Address: addr, Port: port, Weights: api.AgentWeights{Passing: passing, Warning: warning}},
	}
	for i, s := range statuses {
		e.Checks = append(e.Checks, &api.HealthCheck{CheckID: id + "-" + string(rune('a'+i)), Status: s})
	}
	return e
}

func TestEndpointOf(t *testing.T) {
	tests := []struct {
		name   string
		in     *api.ServiceEntry
		want   discovery.Endpoint
		wantOK bool
	}{
		{"all passing: Passing weight", entry("a", "127.0.0.1", 7001, 7, 2, api.HealthPassing, api.HealthPassing),
			discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 7}, true},
		{"no checks: Passing weight", entry("a", "127.0.0.1", 7001, 3, 1),
			discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 3}, true},
		{"one warning: Warning weight, degraded", entry("a", "127.0.0.1", 7001, 7, 2, api.HealthPassing, api.HealthWarning),
			discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 2, Health: discovery.Degraded}, true},
		{"one critical: excluded", entry("a", "127.0.0.1", 7001, 7, 2, api.HealthPassing, api.HealthCritical), discovery.Endpoint{}, false},
		{"warning and critical: excluded", entry("a", "127.0.0.1", 7001, 7, 2, api.HealthWarning, api.HealthCritical), discovery.Endpoint{}, false},
		{"maintenance: excluded", entry("a", "127.0.0.1", 7001, 7, 2, api.HealthMaint), discovery.Endpoint{}, false},
		{"unknown state: excluded", entry("a", "127.0.0.1", 7001, 7, 2, "bogus"), discovery.Endpoint{}, false},
		{"weights missing: 1/1", entry("a", "127.0.0.1", 7001, 0, 0, api.HealthPassing),
			discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 1}, true},
		{"weights missing, warning: 1", entry("a", "127.0.0.1", 7001, 0, 0, api.HealthWarning),
			discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 1, Health: discovery.Degraded}, true},
		{"warning weight 0 while warning: excluded", entry("a", "127.0.0.1", 7001, 5, 0, api.HealthWarning), discovery.Endpoint{}, false},
		{"warning weight 0 while passing: Passing", entry("a", "127.0.0.1", 7001, 5, 0, api.HealthPassing),
			discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 5}, true},
		{"clamped to 128", entry("a", "127.0.0.1", 7001, 1000, 1),
			discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 128}, true},
		{"node address when the service has none", entry("a", "", 7001, 1, 1),
			discovery.Endpoint{Address: "198.18.0.1:7001", Weight: 1}, true},
		{"IPv6 service address", entry("a", "::1", 7001, 1, 1),
			discovery.Endpoint{Address: "[::1]:7001", Weight: 1}, true},
		{"no port: skipped", entry("a", "127.0.0.1", 0, 1, 1), discovery.Endpoint{}, false},
		{"nil service: skipped", &api.ServiceEntry{Node: &api.Node{Address: "198.18.0.1"}}, discovery.Endpoint{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := endpointOf(tt.in)
			if ok != tt.wantOK || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("endpointOf = %+v, %v; want %+v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestEndpointOfCopiesMeta(t *testing.T) {
	e := entry("a", "127.0.0.1", 7001, 1, 1)
	e.Service.Meta = map[string]string{"version": "1.2.3"}
	ep, ok := endpointOf(e)
	if !ok || ep.Meta["version"] != "1.2.3" {
		t.Fatalf("endpointOf = %+v, %v; want meta version 1.2.3", ep, ok)
	}
	e.Service.Meta["version"] = "changed"
	if ep.Meta["version"] != "1.2.3" {
		t.Fatal("endpoint meta aliases the Consul answer")
	}
}

func TestEndpointsOfMergesSameAddress(t *testing.T) {
	got := endpointsOf([]*api.ServiceEntry{
		entry("b", "127.0.0.1", 7001, 3, 1, api.HealthWarning), // degraded, weight 1
		entry("a", "127.0.0.1", 7001, 2, 1),                    // healthy, weight 2
		entry("c", "127.0.0.1", 7002, 5, 1),
		entry("d", "127.0.0.1", 7003, 5, 1, api.HealthCritical),
		nil,
	})
	want := []discovery.Endpoint{
		{Address: "127.0.0.1:7001", Weight: 3, Health: discovery.Healthy},
		{Address: "127.0.0.1:7002", Weight: 5},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("endpointsOf = %+v, want %+v", got, want)
	}
}
