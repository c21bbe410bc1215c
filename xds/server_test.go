package xds

import (
	"context"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/upstream"
)

func TestServerOneVersionPerChange(t *testing.T) {
	src := &fakeSource{}
	src.Publish(mustSnap(t, "api", 1, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 1}))
	src.Publish(mustSnap(t, "web", 1, discovery.Endpoint{Address: "127.0.0.1:8001", Weight: 1}))
	srv, err := NewServer(ServerOptions{Source: src, Upstreams: []Upstream{{Service: "api"}, {Service: "web"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()

	check := func(step, want string) {
		t.Helper()
		if got := srv.Version(); got != want {
			t.Fatalf("%s: Version() = %q, want %q", step, got, want)
		}
		rs, err := srv.Cache().GetSnapshot(snapshotKey)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		snap := rs.(*cache.Snapshot)
		for _, typ := range []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType} {
			if v := snap.GetVersion(typ); v != want {
				t.Fatalf("%s: %s version %q, want %q", step, typ, v, want)
			}
		}
		if err := consistent(snap); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	check("two initial snapshots", "1")

	src.Publish(mustSnap(t, "api", 2, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 4}))
	check("weight change", "2")

	src.Publish(mustSnap(t, "api", 3, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 4}))
	check("same endpoints again", "2")

	src.ResourceError("web", discovery.ErrNotFound)
	check("web gone", "3")
	rs, _ := srv.Cache().GetSnapshot(snapshotKey)
	if cla := rs.GetResources(resource.EndpointType)["web"].(*endpointv3.ClusterLoadAssignment); len(cla.Endpoints) != 0 {
		t.Fatalf("web after a resource error: %v, want no endpoints", cla)
	}

	if err := srv.SetSettings([]Upstream{{Service: "api", Settings: upstream.Settings{LBPolicy: balancer.LeastRequest}}, {Service: "db"}}); err != nil {
		t.Fatal(err)
	}
	check("settings replaced", "4")
	src.Publish(mustSnap(t, "web", 4, discovery.Endpoint{Address: "127.0.0.1:8001", Weight: 9}))
	check("change of a service no longer served", "4")
	if got := srv.Stats().Services; strings.Join(got, ",") != "api,db" {
		t.Fatalf("services = %v, want api,db", got)
	}

	for _, bad := range [][]Upstream{
		{{Service: "api"}, {Service: "api"}},
		{{Service: "api", Settings: upstream.Settings{LBPolicy: "fastest"}}},
		{{Service: ""}},
	} {
		if err := srv.SetSettings(bad); err == nil {
			t.Errorf("SetSettings(%+v) = nil, want an error", bad)
		}
	}
	check("rejected settings", "4")
}

func nodeProto(id string) *corev3.Node { return &corev3.Node{Id: id} }

func adsStream(t *testing.T, addr string) discoveryv3.AggregatedDiscoveryServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
}

// A NACK is not answered with the rejected version again (which a client
// would reject again, in a loop): the next response carries the next
// version.
func TestServerDoesNotResendNACKedVersion(t *testing.T) {
	src := &fakeSource{}
	src.Publish(mustSnap(t, "api", 1, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 1}))
	srv, err := NewServer(ServerOptions{Source: src, Upstreams: []Upstream{{Service: "api"}}})
	if err != nil {
		t.Fatal(err)
	}
	lis := listen(t, "127.0.0.1:0")
	stop := serve(t, srv, lis)
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := adsStream(t, lis.Addr().String()).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	req := &discoveryv3.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: []string{"api"}, Node: nodeProto("n1")}
	if err := st.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVersionInfo() != "1" || len(resp.GetResources()) != 1 {
		t.Fatalf("first response: version %q, %d resources", resp.GetVersionInfo(), len(resp.GetResources()))
	}
	nack := &discoveryv3.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: []string{"api"},
		ResponseNonce: resp.GetNonce(), ErrorDetail: &statuspb.Status{Code: 3, Message: "test: rejected"}}
	if err := st.Send(nack); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the server to count the NACK", func() bool { return srv.Stats().NACKs == 1 })
	src.Publish(mustSnap(t, "api", 2, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 6}))
	resp, err = st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVersionInfo() != "2" {
		t.Fatalf("response after the NACK has version %q, want 2 (the NACKed 1 must not come back)", resp.GetVersionInfo())
	}
	cla := &endpointv3.ClusterLoadAssignment{}
	if err := resp.GetResources()[0].UnmarshalTo(cla); err != nil {
		t.Fatal(err)
	}
	if w := cla.Endpoints[0].LbEndpoints[0].LoadBalancingWeight.GetValue(); w != 6 {
		t.Fatalf("weight %d, want 6", w)
	}
	stats := srv.Stats()
	if stats.LastNACK == nil || stats.LastNACK.Detail != "test: rejected" || stats.LastNACK.Version != "1" || stats.LastNACK.Node != "n1" {
		t.Fatalf("LastNACK = %+v, want detail, version 1 and node n1", stats.LastNACK)
	}
}

// The delta protocol works on the same server.
func TestServerDelta(t *testing.T) {
	src := &fakeSource{}
	src.Publish(mustSnap(t, "api", 1, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 2}))
	srv, err := NewServer(ServerOptions{Source: src, Upstreams: []Upstream{{Service: "api"}, {Service: "web"}}})
	if err != nil {
		t.Fatal(err)
	}
	lis := listen(t, "127.0.0.1:0")
	stop := serve(t, srv, lis)
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := adsStream(t, lis.Addr().String()).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("n1"), TypeUrl: resource.EndpointType,
		ResourceNamesSubscribe: []string{"api"}}); err != nil {
		t.Fatal(err)
	}
	recvWeight := func() uint32 {
		t.Helper()
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != "api" {
			t.Fatalf("delta response %v, want exactly api", resp)
		}
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := resp.GetResources()[0].GetResource().UnmarshalTo(cla); err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		return cla.Endpoints[0].LbEndpoints[0].LoadBalancingWeight.GetValue()
	}
	if w := recvWeight(); w != 2 {
		t.Fatalf("weight %d, want 2", w)
	}
	src.Publish(mustSnap(t, "api", 2, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 5}))
	if w := recvWeight(); w != 5 {
		t.Fatalf("weight %d, want 5", w)
	}
}
