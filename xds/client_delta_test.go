package xds

import (
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/upstream"
)

// fakeDeltaADS records the client's delta requests and answers nothing.
type fakeDeltaADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	reqs chan *discoveryv3.DeltaDiscoveryRequest
	held []*discoveryv3.DeltaDiscoveryRequest // read while waiting for another type, in order
}

func (f *fakeDeltaADS) DeltaAggregatedResources(st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	for {
		req, err := st.Recv()
		if err != nil {
			return nil
		}
		select {
		case f.reqs <- req:
		case <-st.Context().Done():
			return nil
		}
	}
}

func (f *fakeDeltaADS) next(t *testing.T, typeURL string) *discoveryv3.DeltaDiscoveryRequest {
	t.Helper()
	return nextOfType(t, &f.held, f.reqs, typeURL)
}

func startGRPC(t *testing.T, register func(*grpc.Server)) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// The delta client subscribes exactly the watched services and follows
// watches added and cancelled (a reload adding and removing upstreams)
// with resource_names_subscribe and _unsubscribe.
func TestDeltaClientSubscribeUnsubscribe(t *testing.T) {
	f := &fakeDeltaADS{reqs: make(chan *discoveryv3.DeltaDiscoveryRequest, 64)}
	addr := startGRPC(t, func(g *grpc.Server) { discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, f) })
	c := newClient(t, addr)

	var api, web recorder
	cancelAPI := c.Watch("api", &api)
	defer cancelAPI()
	first := f.next(t, resource.ClusterType)
	if first.GetNode().GetId() != "node-1" || fmt.Sprint(first.GetResourceNamesSubscribe()) != "[api]" {
		t.Fatalf("first CDS request: node %q, subscribe %v; want node-1, [api]", first.GetNode().GetId(), first.GetResourceNamesSubscribe())
	}
	if eds := f.next(t, resource.EndpointType); fmt.Sprint(eds.GetResourceNamesSubscribe()) != "[api]" {
		t.Fatalf("first EDS request subscribes %v, want [api]", eds.GetResourceNamesSubscribe())
	}

	cancelWeb := c.Watch("web", &web)
	for _, typ := range clientTypes {
		r := f.next(t, typ)
		if fmt.Sprint(r.GetResourceNamesSubscribe()) != "[web]" || len(r.GetResourceNamesUnsubscribe()) != 0 {
			t.Fatalf("%s after watching web: subscribe %v, unsubscribe %v; want [web], none", typeLabel(typ), r.GetResourceNamesSubscribe(), r.GetResourceNamesUnsubscribe())
		}
	}
	if got := c.Subscribed(); !slices.Equal(got, []string{"api", "web"}) {
		t.Fatalf("Subscribed() = %v", got)
	}

	// A second watch of web (WatchCluster) keeps it subscribed when the
	// first is cancelled; the last cancel unsubscribes.
	cancelWebCluster := c.WatchCluster("web", func(upstream.Settings) {})
	cancelWeb()
	if got := c.Subscribed(); !slices.Equal(got, []string{"api", "web"}) {
		t.Fatalf("Subscribed() with one watch of web left = %v", got)
	}
	cancelWebCluster()
	for _, typ := range clientTypes {
		r := f.next(t, typ)
		if fmt.Sprint(r.GetResourceNamesUnsubscribe()) != "[web]" || len(r.GetResourceNamesSubscribe()) != 0 {
			t.Fatalf("%s after the last watch of web: subscribe %v, unsubscribe %v; want none, [web]", typeLabel(typ), r.GetResourceNamesSubscribe(), r.GetResourceNamesUnsubscribe())
		}
	}
	if got := c.Subscribed(); !slices.Equal(got, []string{"api"}) {
		t.Fatalf("Subscribed() after unsubscribing web = %v", got)
	}
}

// Against a server without delta xDS, the client falls back to state of
// the world and gets its data.
func TestClientFallsBackToStateOfTheWorld(t *testing.T) {
	f := &fakeADS{reqs: make(chan *discoveryv3.DiscoveryRequest, 16), resps: make(chan *discoveryv3.DiscoveryResponse)}
	addr := startGRPC(t, func(g *grpc.Server) { discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, f) })
	c := newClient(t, addr)
	var api recorder
	defer c.Watch("api", &api)()
	cds := f.next(t, resource.ClusterType)
	if fmt.Sprint(cds.GetResourceNames()) != "[api]" {
		t.Fatalf("SotW CDS request names %v, want [api]", cds.GetResourceNames())
	}
	f.resps <- response(t, resource.ClusterType, "1", "n1", Cluster(Defaults("api")))
	eds := f.next(t, resource.EndpointType)
	for eds.GetResponseNonce() != "" {
		eds = f.next(t, resource.EndpointType)
	}
	cla, err := loadAssignment("api", mustSnap(t, "api", 1, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 4}))
	if err != nil {
		t.Fatal(err)
	}
	f.resps <- response(t, resource.EndpointType, "1", "n2", cla)
	waitFor(t, "api's endpoints over state of the world", func() bool {
		return sameWeights(api.snapshot(), map[string]uint32{"127.0.0.1:7001": 4})
	})
	if st := c.Stats(); st.Delta || !st.Connected {
		t.Fatalf("stats %+v, want a connected state-of-the-world stream", st)
	}
}

// With a list of replicas the client connects to one and, when it goes
// away, fails over to another and gets the same data.
func TestClientFailsOverBetweenReplicas(t *testing.T) {
	src := &fakeSource{}
	src.Publish(mustSnap(t, "api", 1, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 3}))
	var srvs []*Server
	var stops []func()
	var addrs AddressList
	for range 2 {
		srv, err := NewServer(ServerOptions{Source: src, Upstreams: []Upstream{Defaults("api")}})
		if err != nil {
			t.Fatal(err)
		}
		lis := listen(t, "127.0.0.1:0")
		srvs, stops, addrs = append(srvs, srv), append(stops, serve(t, srv, lis)), append(addrs, lis.Addr().String())
	}
	c, err := NewClient(ClientConfig{Address: addrs, NodeID: "node-1"},
		ClientOptions{BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var api recorder
	defer c.Watch("api", &api)()
	waitFor(t, "api from one replica", func() bool { return sameWeights(api.snapshot(), map[string]uint32{"127.0.0.1:7001": 3}) })
	on := -1
	waitFor(t, "one replica with the stream", func() bool {
		for i, srv := range srvs {
			if srv.Stats().Streams == 1 {
				on = i
				return true
			}
		}
		return false
	})
	other := 1 - on
	stops[on]()
	waitFor(t, "the stream on the other replica", func() bool { return srvs[other].Stats().Streams == 1 })
	src.Publish(mustSnap(t, "api", 2, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 8}))
	waitFor(t, "an update through the other replica", func() bool {
		return sameWeights(api.snapshot(), map[string]uint32{"127.0.0.1:7001": 8})
	})
}
