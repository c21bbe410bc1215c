package consul

import (
	"reflect"
	"testing"

	"github.com/sidemesh/sidemesh/discovery"
)

func TestDCKey(t *testing.T) {
	if k := dcKey("api", ""); k != "api" {
		t.Fatalf("local key %q", k)
	}
	svc, dc := splitKey(dcKey("api", "dc2"))
	if svc != "api" || dc != "dc2" {
		t.Fatalf("split %q %q", svc, dc)
	}
}

// The merged snapshot gives the local datacenter priority 0 and each
// failover datacenter the next; an address seen twice keeps its lowest
// priority; an unchanged merge is the same snapshot (a confirmation).
func TestFailoverMerge(t *testing.T) {
	snap := func(key string, eps ...discovery.Endpoint) *discovery.Snapshot {
		s, err := discovery.NewSnapshot(key, 1, eps)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	f := &FailoverWatch{service: "api", dcs: []string{"", "dc2", "dc3"}, state: map[string]*dcState{
		"":    {snap: snap("api", discovery.Endpoint{Address: "127.0.0.1:1", Weight: 1, Region: "dc1"})},
		"dc2": {snap: snap("api?dc=dc2", discovery.Endpoint{Address: "127.0.0.1:2", Weight: 2}, discovery.Endpoint{Address: "127.0.0.1:1", Weight: 1})},
		"dc3": {}, // not answered yet
	}}
	got := f.mergeLocked()
	want := []discovery.Endpoint{
		{Address: "127.0.0.1:1", Weight: 1, Region: "dc1"},
		{Address: "127.0.0.1:2", Weight: 2, Priority: 1, Region: "dc2"},
	}
	if got == nil || got.Service != "api" || got.Version != 1 || !reflect.DeepEqual(got.Endpoints, want) {
		t.Fatalf("merged %+v, want %+v", got, want)
	}
	if again := f.mergeLocked(); again != got {
		t.Fatal("an unchanged merge made a new snapshot")
	}
	// The failover list changes order: priorities follow.
	f.dcs = []string{"", "dc3", "dc2"}
	f.state["dc3"].snap = snap("api?dc=dc3", discovery.Endpoint{Address: "127.0.0.1:3", Weight: 1})
	got = f.mergeLocked()
	prio := map[string]uint32{}
	for _, ep := range got.Endpoints {
		prio[ep.Address] = ep.Priority
	}
	if got.Version != 2 || !reflect.DeepEqual(prio, map[string]uint32{"127.0.0.1:1": 0, "127.0.0.1:3": 1, "127.0.0.1:2": 2}) {
		t.Fatalf("version %d priorities %v", got.Version, prio)
	}
	if st := f.Status(); len(st) != 3 || st[1].Datacenter != "dc3" || st[1].Priority != 1 || st[2].Endpoints != 2 {
		t.Fatalf("status %+v", st)
	}
}
