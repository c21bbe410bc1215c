// Package proxyless_test checks that grpc-go's own xDS resolver and
// balancers (google.golang.org/grpc/xds) reach backends through
// xds:///SERVICE as served by our xds.Server. It lives in its own package
// because grpc's xDS support registers process-wide state.
package proxyless_test

import (
	"context"
	"fmt"
	"math"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/discovery/consul"
	"github.com/sidemesh/sidemesh/internal/testenv"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/xds"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type source struct{ discovery.Fanout }

func (*source) Close() error { return nil }

// setup starts two backends, our xDS server serving them as "api" with
// the given settings and weights 1 and 3, and a gRPC client channel to
// xds:///api.
func setup(t *testing.T, settings xds.Upstream) (*source, []*testenv.GRPCBackend, healthpb.HealthClient) {
	t.Helper()
	backends := []*testenv.GRPCBackend{testenv.StartGRPCBackend(t), testenv.StartGRPCBackend(t)}
	src := &source{}
	publish(t, src, 1, map[string]uint32{backends[0].Addr: 1, backends[1].Addr: 3})

	srv, err := xds.NewServer(xds.ServerOptions{Source: src, Upstreams: []xds.Upstream{settings}})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "proxyless-test"}
	}`, lis.Addr().String())
	resolver, err := grpcxds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///api", grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return src, backends, healthpb.NewHealthClient(conn)
}

func publish(t *testing.T, src *source, version uint64, weights map[string]uint32) {
	t.Helper()
	var eps []discovery.Endpoint
	for addr, w := range weights {
		eps = append(eps, discovery.Endpoint{Address: addr, Weight: w})
	}
	snap, err := discovery.NewSnapshot("api", version, eps)
	if err != nil {
		t.Fatal(err)
	}
	src.Publish(snap)
}

// call makes one RPC and returns the backend address that served it.
func call(t *testing.T, c healthpb.HealthClient) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
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
	deadline := time.Now().Add(10 * time.Second)
	for !cond(call(t, c)) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// round_robin (gRPC's policy under xDS ROUND_ROBIN) spreads calls evenly
// over both backends; gRPC's round_robin ignores endpoint weights
// (grpc/grpc#32004), so the split is 1:1 whatever the weights.
func TestProxylessRoundRobin(t *testing.T) {
	src, backends, client := setup(t, xds.Defaults("api"))
	seen := map[string]bool{}
	until(t, client, "both backends to serve", func(addr string) bool {
		seen[addr] = true
		return len(seen) == 2
	})
	counts := map[string]int{}
	for range 100 {
		counts[call(t, client)]++
	}
	for _, b := range backends {
		if n := counts[b.Addr]; n < 49 || n > 51 {
			t.Errorf("backend %s served %d of 100 calls, want 50±1 (round robin): %v", b.Addr, n, counts)
		}
	}

	// A change in the source reaches the gRPC client: backend 0 goes.
	publish(t, src, 2, map[string]uint32{backends[1].Addr: 3})
	streak := 0
	until(t, client, "backend 0 to be dropped", func(addr string) bool {
		if addr != backends[1].Addr {
			streak = 0
			return false
		}
		streak++
		return streak == 5 // round robin over two would alternate
	})
	before := backends[0].Count()
	for range 20 {
		if addr := call(t, client); addr != backends[1].Addr {
			t.Fatalf("call served by %s after it was removed", addr)
		}
	}
	if backends[0].Count() != before {
		t.Fatal("removed backend still served calls")
	}
}

// ring_hash honours endpoint weights in gRPC; with no hash policy on the
// route, gRPC hashes each call randomly, so the shares follow the weights
// 1:3.
func TestProxylessRingHashWeights(t *testing.T) {
	settings := xds.Defaults("api")
	settings.Settings.LBPolicy = balancer.RingHash
	settings.Settings.LB.RingHash = balancer.RingHashConfig{MinimumRingSize: 4096, MaximumRingSize: 8192}
	_, backends, client := setup(t, settings)
	seen := map[string]bool{}
	until(t, client, "both backends to serve", func(addr string) bool {
		seen[addr] = true
		return len(seen) == 2
	})
	const n = 2000
	counts := map[string]int{}
	for range n {
		counts[call(t, client)]++
	}
	share := float64(counts[backends[1].Addr]) / n
	// Binomial sd at n=2000 is ~1%; the ring's own placement error at
	// 4096 entries is a few percent more: 0.06 is well outside both.
	if math.Abs(share-0.75) > 0.06 {
		t.Fatalf("weight-3 backend served %.3f of calls, want 0.75±0.06 (%v)", share, counts)
	}
}

// A service registered in Consul and named nowhere in the control plane's
// config (the server serves the source's catalog) reaches a proxyless gRPC
// client dialing xds:///pay.
func TestProxylessServiceFromConsulCatalog(t *testing.T) {
	agent := testenv.StartConsul(t)
	backend := testenv.StartGRPCBackend(t)
	host, port, err := net.SplitHostPort(backend.Addr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Client(t).Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "pay-1", Name: "pay", Address: host, Port: p}); err != nil {
		t.Fatal(err)
	}
	src, err := consul.New(consul.Config{Address: agent.Addr()}, consul.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	srv, err := xds.NewServer(xds.ServerOptions{Source: src, ServeCatalog: true})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "proxyless-catalog"}
	}`, lis.Addr().String())
	resolver, err := grpcxds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///pay", grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if got := call(t, healthpb.NewHealthClient(conn)); got != backend.Addr {
		t.Fatalf("xds:///pay reached %s, want %s", got, backend.Addr)
	}
}
