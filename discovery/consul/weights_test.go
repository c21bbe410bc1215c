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
		{"one critical: unhealthy", entry("a", "127.0.0.1", 7001, 7, 2, api.HealthPassing, api.HealthCritical),
			discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 7, Health: discovery.Unhealthy}, true},
		{"warning and critical: unhealthy", entry("a", "127.0.0.1", 7001, 7, 2, api.HealthWarning, api.HealthCritical),
			discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 7, Health: discovery.Unhealthy}, true},
		{"critical and warning: unhealthy", entry("a", "127.0.0.1", 7001, 7, 2, api.HealthCritical, api.HealthWarning),
			discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 7, Health: discovery.Unhealthy}, true},
		{"maintenance: unhealthy", entry("a", "127.0.0.1", 7001, 7, 2, api.HealthMaint),
			discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 7, Health: discovery.Unhealthy}, true},
		{"unknown state: unhealthy", entry("a", "127.0.0.1", 7001, 7, 2, "bogus"),
			discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 7, Health: discovery.Unhealthy}, true},
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

func TestEndpointOfLocality(t *testing.T) {
	e := entry("a", "127.0.0.1", 7001, 1, 1)
	e.Node.Datacenter, e.Node.Meta = "dc2", map[string]string{"zone": "node-zone"}
	ep, _ := endpointOf(e)
	if ep.Region != "dc2" || ep.Zone != "node-zone" {
		t.Fatalf("endpointOf = %+v; want region dc2, zone from the node meta", ep)
	}
	e.Service.Meta = map[string]string{"zone": "svc-zone"}
	if ep, _ = endpointOf(e); ep.Zone != "svc-zone" {
		t.Fatalf("endpointOf = %+v; want the service meta zone to win", ep)
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
		entry("e", "127.0.0.1", 7002, 4, 1, api.HealthCritical), // critical beside a healthy one: no share
		entry("f", "127.0.0.1", 7004, 2, 1, api.HealthCritical),
		entry("g", "127.0.0.1", 7004, 6, 1), // healthy beside a critical one: its weight only
		nil,
	})
	want := []discovery.Endpoint{
		{Address: "127.0.0.1:7001", Weight: 3, Health: discovery.Healthy},
		{Address: "127.0.0.1:7002", Weight: 5},
		{Address: "127.0.0.1:7003", Weight: 5, Health: discovery.Unhealthy},
		{Address: "127.0.0.1:7004", Weight: 6},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("endpointsOf = %+v, want %+v", got, want)
	}
}
