package xds

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/upstream"
)

// Each resource type has its own version, a hash of its content: a
// change moves only the versions of the types it changes, and unchanged
// content keeps them.
func TestServerVersionsPerTypeFromContent(t *testing.T) {
	src := &fakeSource{}
	src.Publish(mustSnap(t, "api", 1, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 1}))
	src.Publish(mustSnap(t, "web", 1, discovery.Endpoint{Address: "127.0.0.1:8001", Weight: 1}))
	srv, err := NewServer(ServerOptions{Source: src, Upstreams: []Upstream{{Service: "api"}, {Service: "web"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()

	all := []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}
	prev := map[string]string{}
	prevServed := map[string]*deltaSnapshot{}
	var pushes uint64
	// check asserts that exactly the types in moved changed version
	// since the last check, that each type's cache serves its version,
	// and that the caches of the other types were not set again (their
	// watches are not woken).
	check := func(step string, moved ...string) {
		t.Helper()
		combined := &cache.Snapshot{}
		now := srv.Versions()
		for _, typ := range all {
			served := srv.served(typ)
			if served == nil {
				t.Fatalf("%s: no %s snapshot", step, typ)
			}
			if now[typ] == "" || served.version != now[typ] {
				t.Fatalf("%s: %s version %q, served snapshot has %q", step, typ, now[typ], served.version)
			}
			combined.Resources[cache.GetResponseType(typ)] = cache.NewResources(served.version, slices.Collect(maps.Values(typedResources(t, served))))
			want := slices.Contains(moved, typ)
			if got := now[typ] != prev[typ]; got != want {
				t.Errorf("%s: %s version changed = %v, want %v (%q -> %q)", step, typ, got, want, prev[typ], now[typ])
			}
			if set := served != prevServed[typ]; set != want {
				t.Errorf("%s: %s snapshot set again = %v, want %v", step, typ, set, want)
			}
			prevServed[typ] = served
		}
		if err := consistent(combined); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		wantPushes := pushes
		if len(moved) > 0 {
			wantPushes++
		}
		if got := srv.Stats().Pushes; got != wantPushes {
			t.Errorf("%s: %d pushes, want %d", step, got, wantPushes)
		}
		prev, pushes = now, srv.Stats().Pushes
	}
	check("two initial snapshots", all...)

	src.Publish(mustSnap(t, "api", 2, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 4}))
	check("weight change", resource.EndpointType)

	src.Publish(mustSnap(t, "api", 3, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 4}))
	check("same endpoints again")

	src.ResourceError("web", discovery.ErrNotFound)
	check("web gone", resource.EndpointType)
	if cla := typedResources(t, srv.served(resource.EndpointType))["web"].(*endpointv3.ClusterLoadAssignment); len(cla.Endpoints) != 0 {
		t.Fatalf("web after a resource error: %v, want no endpoints", cla)
	}

	if err := srv.SetSettings([]Upstream{{Service: "api", Settings: upstream.Settings{LBPolicy: balancer.LeastRequest}}, {Service: "web"}}); err != nil {
		t.Fatal(err)
	}
	check("lb policy of api changed", resource.ClusterType)
	if err := srv.SetSettings([]Upstream{{Service: "api", Settings: upstream.Settings{LBPolicy: balancer.LeastRequest}}, {Service: "web"}}); err != nil {
		t.Fatal(err)
	}
	check("same settings again")

	if err := srv.SetSettings([]Upstream{{Service: "api", Settings: upstream.Settings{LBPolicy: balancer.LeastRequest}}, {Service: "db"}}); err != nil {
		t.Fatal(err)
	}
	check("web replaced by db", all...)
	src.Publish(mustSnap(t, "web", 4, discovery.Endpoint{Address: "127.0.0.1:8001", Weight: 9}))
	check("change of a service no longer served")
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
	check("rejected settings")

	// A second server with the same state (another replica) serves the
	// same versions.
	other, err := NewServer(ServerOptions{Source: src, Upstreams: []Upstream{{Service: "db"}, {Service: "api", Settings: upstream.Settings{LBPolicy: balancer.LeastRequest}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Stop()
	if a, b := srv.Versions(), other.Versions(); !maps.Equal(a, b) || srv.Version() != other.Version() {
		t.Fatalf("replicas with the same state serve different versions: %v vs %v", a, b)
	}
}

// Source changes within the debounce interval make one push.
func TestServerDebounce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &fakeSource{}
		src.Publish(mustSnap(t, "api", 1, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 1}))
		srv, err := NewServer(ServerOptions{Source: src, Upstreams: []Upstream{{Service: "api"}}, Debounce: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Stop()
		if p := srv.Stats().Pushes; p != 1 {
			t.Fatalf("%d pushes after NewServer, want 1", p)
		}
		first := srv.Version()
		for w := uint32(2); w <= 6; w++ {
			src.Publish(mustSnap(t, "api", uint64(w), discovery.Endpoint{Address: "127.0.0.1:7001", Weight: w}))
			time.Sleep(5 * time.Millisecond)
		}
		if p, v := srv.Stats().Pushes, srv.Version(); p != 1 || v != first {
			t.Fatalf("within the debounce interval: %d pushes, version %s, want 1 and %s", p, v, first)
		}
		time.Sleep(50 * time.Millisecond)
		synctest.Wait()
		if p := srv.Stats().Pushes; p != 2 {
			t.Fatalf("after the debounce interval: %d pushes, want 2", p)
		}
		cla := typedResources(t, srv.served(resource.EndpointType))["api"].(*endpointv3.ClusterLoadAssignment)
		if w := cla.Endpoints[0].LbEndpoints[0].LoadBalancingWeight.GetValue(); w != 6 {
			t.Fatalf("weight %d after the burst, want the last (6)", w)
		}
	})
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
	firstVersion := resp.GetVersionInfo()
	if firstVersion != srv.Versions()[resource.EndpointType] || len(resp.GetResources()) != 1 {
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
	if resp.GetVersionInfo() == firstVersion || resp.GetVersionInfo() != srv.Versions()[resource.EndpointType] {
		t.Fatalf("response after the NACK has version %q, want the new %q (the NACKed %q must not come back)", resp.GetVersionInfo(), srv.Versions()[resource.EndpointType], firstVersion)
	}
	cla := &endpointv3.ClusterLoadAssignment{}
	if err := resp.GetResources()[0].UnmarshalTo(cla); err != nil {
		t.Fatal(err)
	}
	if w := cla.Endpoints[0].LbEndpoints[0].LoadBalancingWeight.GetValue(); w != 6 {
		t.Fatalf("weight %d, want 6", w)
	}
	stats := srv.Stats()
	if stats.LastNACK == nil || stats.LastNACK.Detail != "test: rejected" || stats.LastNACK.Version != firstVersion || stats.LastNACK.Node != "n1" {
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

// typedResources decodes a served snapshot's resources (each resource is
// kept marshalled, as sent).
func typedResources(t *testing.T, ds *deltaSnapshot) map[string]types.Resource {
	t.Helper()
	out := make(map[string]types.Resource, len(ds.res))
	for name, r := range ds.res {
		m, err := r.pb.GetResource().UnmarshalNew()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[name] = m.(types.Resource)
	}
	return out
}
