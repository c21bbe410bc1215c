// Package proxyless holds the end-to-end test of proxyless gRPC: grpc-go's
// own xDS resolver and balancers (google.golang.org/grpc/xds), configured
// the way users configure them (the GRPC_XDS_BOOTSTRAP_CONFIG environment
// variable), reach real gRPC backends through xds:///SERVICE as served by
// the real binary's `sidemesh xds -c`.
//
// It is a package of its own because gRPC reads the bootstrap variables
// once, when its packages initialise: TestMain picks the xDS server's
// address, sets the variable and runs the tests in a child process (this
// test binary again), so that the variable is there before gRPC starts.
package proxyless

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and the xDS balancers

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// addrEnv carries the xDS server's address from TestMain to the child.
const addrEnv = "SIDEMESH_PROXYLESS_XDS_ADDR"

// xdsAddr is where the test runs `sidemesh xds`; the bootstrap names it.
var xdsAddr = os.Getenv(addrEnv)

func TestMain(m *testing.M) {
	if xdsAddr != "" { // the child: gRPC has read the bootstrap
		os.Exit(m.Run())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxyless:", err)
		os.Exit(1)
	}
	addr := ln.Addr().String()
	ln.Close()
	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "proxyless-e2e", "cluster": "proxyless"}
	}`, addr)
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP_CONFIG="+bootstrap, addrEnv+"="+addr)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			os.Exit(exit.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "proxyless: run the tests with the bootstrap set:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// sidemeshBin is $SIDEMESH_BIN or a fresh build of ./cmd/sidemesh.
func sidemeshBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SIDEMESH_BIN"); p != "" {
		return p
	}
	path := filepath.Join(t.TempDir(), "sidemesh")
	cmd := exec.Command("go", "build", "-o", path, "./cmd/sidemesh")
	cmd.Dir = testenv.RepoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return path
}

// writeEndpoints writes the endpoints file atomically: service → addr → weight.
func writeEndpoints(t *testing.T, path string, eps map[string]map[string]int) {
	t.Helper()
	var b strings.Builder
	b.WriteString("services:\n")
	svcs := make([]string, 0, len(eps))
	for s := range eps {
		svcs = append(svcs, s)
	}
	sort.Strings(svcs)
	for _, s := range svcs {
		fmt.Fprintf(&b, "  %s:\n", s)
		addrs := make([]string, 0, len(eps[s]))
		for a := range eps[s] {
			addrs = append(addrs, a)
		}
		sort.Strings(addrs)
		for _, a := range addrs {
			fmt.Fprintf(&b, "    - {address: %s, weight: %d}\n", a, eps[s][a])
		}
	}
	if err := os.WriteFile(path+".tmp", []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// call makes one RPC and returns the backend address that served it.
func call(t *testing.T, c healthpb.HealthClient) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true), grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	return p.Addr.String()
}

// until calls until cond holds for the serving backend, within a deadline.
func until(t *testing.T, c healthpb.HealthClient, what string, cond func(addr string) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond(call(t, c)) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func dial(t *testing.T, service string) healthpb.HealthClient {
	t.Helper()
	conn, err := grpc.NewClient("xds:///"+service, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

// A proxyless gRPC client resolves xds:///ring and xds:///rr from the
// binary's standalone xDS server: ring_hash honours the endpoint weights
// (1:3), round_robin spreads evenly (gRPC's round_robin ignores weights,
// grpc/grpc#32004), and a change of the server's endpoints file reaches
// the client.
func TestProxylessThroughSidemeshXDS(t *testing.T) {
	bs := []*testenv.GRPCBackend{testenv.StartGRPCBackend(t), testenv.StartGRPCBackend(t), testenv.StartGRPCBackend(t)}
	dir := t.TempDir()
	epFile := filepath.Join(dir, "endpoints.yaml")
	weights := map[string]int{bs[0].Addr: 1, bs[1].Addr: 3}
	writeEndpoints(t, epFile, map[string]map[string]int{"ring": weights, "rr": weights})
	cfg := fmt.Sprintf(`node: xds-cp
discovery: {file: %s}
xds_server: {listen: %s}
upstreams:
  - service: ring
    lb_policy: ring_hash
    ring_hash_lb_config: {minimum_ring_size: 4096, maximum_ring_size: 8192}
  - service: rr
    lb_policy: round_robin
`, epFile, xdsAddr)
	cfgPath := filepath.Join(dir, "xds.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cp := testenv.StartProcess(t, "sidemesh-xds", sidemeshBin(t), "xds", "-admin", "127.0.0.1:0", "-c", cfgPath)
	cp.WaitReady(30*time.Second, func() error {
		c, err := net.DialTimeout("tcp", xdsAddr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})

	ring, rr := dial(t, "ring"), dial(t, "rr")
	for name, c := range map[string]healthpb.HealthClient{"ring": ring, "rr": rr} {
		seen := map[string]bool{}
		until(t, c, name+": both backends to serve", func(addr string) bool {
			seen[addr] = true
			return seen[bs[0].Addr] && seen[bs[1].Addr]
		})
	}

	const n = 2000
	counts := map[string]int{}
	for range n {
		counts[call(t, ring)]++
	}
	share := float64(counts[bs[1].Addr]) / n
	t.Logf("ring_hash, weights 1:3: weight-3 backend served %.3f of %d calls (%v)", share, n, counts)
	// Binomial sd at n=2000 is ~1%; the ring's placement error at 4096
	// entries adds a few percent: 0.06 is well outside both.
	if math.Abs(share-0.75) > 0.06 || counts[bs[0].Addr]+counts[bs[1].Addr] != n {
		t.Errorf("weight-3 backend served %.3f of calls, want 0.75±0.06 (%v)", share, counts)
	}

	counts = map[string]int{}
	for range 100 {
		counts[call(t, rr)]++
	}
	t.Logf("round_robin: %v", counts)
	for _, b := range bs[:2] {
		if c := counts[b.Addr]; c < 49 || c > 51 {
			t.Errorf("round_robin: backend %s served %d of 100 calls, want 50±1: %v", b.Addr, c, counts)
		}
	}

	// The file changes: backend 0 goes, backend 2 comes. The client must
	// reach backend 2 and stop calling backend 0.
	start := time.Now()
	next := map[string]int{bs[1].Addr: 1, bs[2].Addr: 1}
	writeEndpoints(t, epFile, map[string]map[string]int{"ring": next, "rr": next})
	seen2 := false
	until(t, rr, "the client to follow the endpoints file", func(addr string) bool {
		seen2 = seen2 || addr == bs[2].Addr
		return seen2
	})
	t.Logf("endpoints file write → proxyless client calling the new backend: %v", time.Since(start).Round(time.Millisecond))
	// Backend 0 may still finish what was in flight; after that, none.
	streak := 0
	until(t, rr, "backend 0 to be dropped", func(addr string) bool {
		if addr == bs[0].Addr {
			streak = 0
			return false
		}
		streak++
		return streak == 10
	})
	before := bs[0].Count()
	for _, c := range []healthpb.HealthClient{rr, ring} {
		for range 50 {
			if addr := call(t, c); addr == bs[0].Addr {
				t.Fatalf("call served by removed backend %s", addr)
			}
		}
	}
	if got := bs[0].Count(); got != before {
		t.Fatalf("removed backend served %d more calls", got-before)
	}
	if bs[2].Count() == 0 {
		t.Fatal("the new backend served nothing")
	}
}
