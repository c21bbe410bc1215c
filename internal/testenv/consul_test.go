package testenv

import (
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestConsulStartRestart(t *testing.T) {
	c := StartConsul(t)
	client := c.Client(t)
	reg := &api.AgentServiceRegistration{ID: "x-1", Name: "x", Address: "127.0.0.1", Port: 7001}
	if err := client.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("register: %v", err)
	}
	Eventually(t, consulReadyTimeout, "x-1 in the catalog", func() error {
		svcs, _, err := client.Catalog().Service("x", "", nil)
		if err != nil {
			return err
		}
		if len(svcs) != 1 {
			return fmt.Errorf("got %d instances of x", len(svcs))
		}
		return nil
	})

	c.Stop()
	if _, err := client.Status().Leader(); err == nil {
		t.Fatal("a stopped agent still answers")
	}

	c.Restart()
	// -dev keeps state in memory: the restarted agent has forgotten x-1.
	svcs, _, err := client.Catalog().Service("x", "", nil)
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if len(svcs) != 0 {
		t.Fatalf("after restart: %d instances of x, want 0 (in-memory agent)", len(svcs))
	}
}

func TestFreePortsDistinct(t *testing.T) {
	ports := FreePorts(t, 8)
	seen := map[int]bool{}
	for _, p := range ports {
		if p <= 0 || seen[p] {
			t.Fatalf("ports %v: %d repeats or is invalid", ports, p)
		}
		seen[p] = true
	}
}

func TestConsulWANOnLoopback(t *testing.T) {
	c1 := StartConsul(t)
	c2 := StartConsul(t, ConsulDatacenter("dc2"), ConsulJoinWAN(c1))
	checkWANFederation(t, c1, c2)
}
