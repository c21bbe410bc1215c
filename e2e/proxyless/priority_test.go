package proxyless

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// writeLevels writes the endpoints file of service prio: addresses by
// priority level.
func writeLevels(t *testing.T, path string, levels ...[]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("services:\n  prio:\n")
	for prio, addrs := range levels {
		for _, a := range addrs {
			fmt.Fprintf(&b, "    - {address: %s, priority: %d}\n", a, prio)
		}
	}
	if err := os.WriteFile(path+".tmp", []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// grpc-go's priority balancer honours the priorities sidemesh's xDS server
// serves: priority 0 takes every call while it can, and once none of its
// endpoints can be reached, priority 1 serves.
func TestProxylessPriorities(t *testing.T) {
	b0, b1 := testenv.StartGRPCBackend(t), testenv.StartGRPCBackend(t)
	dir := t.TempDir()
	epFile := filepath.Join(dir, "endpoints.yaml")
	writeLevels(t, epFile, []string{b0.Addr}, []string{b1.Addr})
	cfgPath := filepath.Join(dir, "xds.yaml")
	cfg := fmt.Sprintf("node: xds-cp\ndiscovery: {file: %s}\nxds_server: {listen: %s}\nupstreams:\n  - service: prio\n    lb_policy: round_robin\n", epFile, xdsAddr)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cp := testenv.StartProcess(t, "sidemesh-xds-prio", sidemeshBin(t), "xds", "-c", cfgPath)
	cp.WaitReady(30*time.Second, func() error {
		c, err := net.DialTimeout("tcp", xdsAddr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})

	c := dial(t, "prio")
	until(t, c, "priority 0 to serve", func(addr string) bool { return addr == b0.Addr })
	for range 50 {
		if addr := call(t, c); addr != b0.Addr {
			t.Fatalf("call served by %s while priority 0 (%s) is reachable", addr, b0.Addr)
		}
	}

	// Priority 0 becomes two endpoints nobody listens on: priority 1 serves.
	start := time.Now()
	writeLevels(t, epFile, []string{deadAddr(t), deadAddr(t)}, []string{b1.Addr})
	until(t, c, "priority 1 to serve", func(addr string) bool { return addr == b1.Addr })
	t.Logf("priority 0 unreachable → priority 1 serving after %v", time.Since(start).Round(time.Millisecond))
	before := b1.Count()
	for range 50 {
		if addr := call(t, c); addr != b1.Addr {
			t.Fatalf("call served by %s, want priority 1 (%s)", addr, b1.Addr)
		}
	}
	if got := b1.Count() - before; got != 50 {
		t.Fatalf("priority 1 served %d of 50 calls", got)
	}
}
