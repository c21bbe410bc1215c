package xds

import (
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/upstream"
)

func TestClientServerRoundTrip(t *testing.T) {
	src := &fakeSource{}
	src.Publish(mustSnap(t, "api", 1,
		discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 1},
		discovery.Endpoint{Address: "127.0.0.1:7002", Weight: 3, Health: discovery.Degraded}))
	apiSettings := Defaults("api")
	apiSettings.Settings.LBPolicy = balancer.LeastRequest
	srv, err := NewServer(ServerOptions{Source: src, Upstreams: []Upstream{apiSettings, Defaults("web")}})
	if err != nil {
		t.Fatal(err)
	}
	lis := listen(t, "127.0.0.1:0")
	stop := serve(t, srv, lis)
	defer stop()

	c := newClient(t, lis.Addr().String())
	var rec recorder
	cancel := c.Watch("api", &rec)
	defer cancel()
	var mu sync.Mutex
	var got []upstream.Settings
	cancelCS := c.WatchCluster("api", func(cs upstream.Settings) {
		mu.Lock()
		got = append(got, cs)
		mu.Unlock()
	})
	defer cancelCS()

	waitFor(t, "the first endpoints", func() bool {
		return sameWeights(rec.snapshot(), map[string]uint32{"127.0.0.1:7001": 1, "127.0.0.1:7002": 3})
	})
	if h := rec.snapshot().Endpoints[1].Health; h != discovery.Degraded {
		t.Fatalf("health of 7002 = %v, want degraded", h)
	}
	waitFor(t, "the cluster settings", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 1 && got[0].LBPolicy == balancer.LeastRequest && got[0].OutlierDetection != nil && reflect.DeepEqual(*got[0].OutlierDetection, *apiSettings.Settings.OutlierDetection)
	})

	firstVersion := rec.snapshot().Version
	src.Publish(mustSnap(t, "api", 2,
		discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 5},
		discovery.Endpoint{Address: "127.0.0.1:7003", Weight: 2}))
	waitFor(t, "the changed endpoints", func() bool {
		return sameWeights(rec.snapshot(), map[string]uint32{"127.0.0.1:7001": 5, "127.0.0.1:7003": 2})
	})
	if v := rec.snapshot().Version; v <= firstVersion {
		t.Fatalf("snapshot version %d after %d, want it to grow", v, firstVersion)
	}
	waitFor(t, "the client to ACK the server's version", func() bool {
		return c.Stats().Types[resource.EndpointType].Version == srv.Versions()[resource.EndpointType]
	})
	st := c.Stats()
	for _, typ := range clientTypes {
		ts := st.Types[typ]
		if ts.NACKs != 0 || ts.ACKs == 0 || ts.ACKs != ts.Updates {
			t.Errorf("%s: %+v, want every update ACKed", typ, ts)
		}
	}
	if !st.Connected || st.Streams != 1 {
		t.Errorf("stats %+v, want connected over one stream", st)
	}
	if n := srv.Stats().NACKs; n != 0 {
		t.Errorf("server saw %d NACKs", n)
	}

	// A second service subscribed later arrives on the same stream.
	var web recorder
	src.Publish(mustSnap(t, "web", 1, discovery.Endpoint{Address: "127.0.0.1:8001", Weight: 7}))
	cancelWeb := c.Watch("web", &web)
	defer cancelWeb()
	waitFor(t, "web's endpoints", func() bool {
		return sameWeights(web.snapshot(), map[string]uint32{"127.0.0.1:8001": 7})
	})

	// A cluster the server stops serving is a resource error.
	if err := srv.SetSettings([]Upstream{apiSettings}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web's resource error", func() bool {
		web.mu.Lock()
		defer web.mu.Unlock()
		return web.last == nil && errors.Is(web.resErr, discovery.ErrNotFound)
	})
	if rec.snapshot() == nil {
		t.Fatal("api lost its endpoints when web was removed")
	}
}

// fakeADS is a hand-driven ADS server: the test reads the client's
// requests and decides every response.
type fakeADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	reqs  chan *discoveryv3.DiscoveryRequest
	resps chan *discoveryv3.DiscoveryResponse
	held  []*discoveryv3.DiscoveryRequest // read while waiting for another type, in order
}

// typed is a request of either protocol.
type typed interface{ GetTypeUrl() string }

// nextOfType returns the next request of typeURL from held (requests
// read earlier while waiting for another type) or reqs, holding the
// others: clients send their CDS and EDS requests in no fixed order.
func nextOfType[R typed](t *testing.T, held *[]R, reqs <-chan R, typeURL string) R {
	t.Helper()
	for i, r := range *held {
		if r.GetTypeUrl() == typeURL {
			*held = append((*held)[:i], (*held)[i+1:]...)
			return r
		}
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case r := <-reqs:
			if r.GetTypeUrl() == typeURL {
				return r
			}
			*held = append(*held, r)
		case <-timeout:
			t.Fatalf("no %s request", typeURL)
		}
	}
}

func (f *fakeADS) StreamAggregatedResources(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	go func() {
		for {
			req, err := st.Recv()
			if err != nil {
				return
			}
			select {
			case f.reqs <- req:
			case <-st.Context().Done():
				return
			}
		}
	}()
	for {
		select {
		case r := <-f.resps:
			if err := st.Send(r); err != nil {
				return err
			}
		case <-st.Context().Done():
			return nil
		}
	}
}

// next returns the client's next request of type typeURL, dropping
// requests of other types.
func (f *fakeADS) next(t *testing.T, typeURL string) *discoveryv3.DiscoveryRequest {
	t.Helper()
	return nextOfType(t, &f.held, f.reqs, typeURL)
}

func response(t *testing.T, typeURL, version, nonce string, msgs ...proto.Message) *discoveryv3.DiscoveryResponse {
	t.Helper()
	resp := &discoveryv3.DiscoveryResponse{TypeUrl: typeURL, VersionInfo: version, Nonce: nonce}
	for _, m := range msgs {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		resp.Resources = append(resp.Resources, a)
	}
	return resp
}

func TestClientNACKKeepsLastGood(t *testing.T) {
	f := &fakeADS{reqs: make(chan *discoveryv3.DiscoveryRequest, 16), resps: make(chan *discoveryv3.DiscoveryResponse)}
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, f)
	lis := listen(t, "127.0.0.1:0")
	go g.Serve(lis)
	defer g.Stop()

	c := newClient(t, lis.Addr().String())
	var rec recorder
	defer c.Watch("api", &rec)()
	var mu sync.Mutex
	var settings []upstream.Settings
	defer c.WatchCluster("api", func(cs upstream.Settings) {
		mu.Lock()
		settings = append(settings, cs)
		mu.Unlock()
	})()

	req := f.next(t, resource.ClusterType)
	if req.GetNode().GetId() != "node-1" || strings.Join(req.GetResourceNames(), ",") != "api" {
		t.Fatalf("first CDS request %v, want node-1 subscribing api", req)
	}
	if req = f.next(t, resource.EndpointType); strings.Join(req.GetResourceNames(), ",") != "api" {
		t.Fatalf("first EDS request %v, want api", req)
	}

	cla := func(weights ...uint32) *endpointv3.ClusterLoadAssignment {
		var eps []discovery.Endpoint
		for i, w := range weights {
			eps = append(eps, discovery.Endpoint{Address: "127.0.0.1:" + string(rune('1'+i)) + "000", Weight: max(w, 1)})
		}
		a, err := loadAssignment("api", mustSnap(t, "api", 1, eps...))
		if err != nil {
			t.Fatal(err)
		}
		for i, w := range weights {
			a.Endpoints[0].LbEndpoints[i].LoadBalancingWeight.Value = w
		}
		return a
	}
	expectACK := func(typeURL, version, nonce string) {
		t.Helper()
		r := f.next(t, typeURL)
		if r.GetVersionInfo() != version || r.GetResponseNonce() != nonce || r.GetErrorDetail() != nil {
			t.Fatalf("got %v, want an ACK of version %s nonce %s", r, version, nonce)
		}
	}
	expectNACK := func(typeURL, version, nonce, detail string) {
		t.Helper()
		r := f.next(t, typeURL)
		if r.GetVersionInfo() != version || r.GetResponseNonce() != nonce || !strings.Contains(r.GetErrorDetail().GetMessage(), detail) {
			t.Fatalf("got %v, want a NACK keeping version %q, nonce %s, detail containing %q", r, version, nonce, detail)
		}
	}

	f.resps <- response(t, resource.ClusterType, "c1", "n1", Cluster(Defaults("api")))
	expectACK(resource.ClusterType, "c1", "n1")
	f.resps <- response(t, resource.EndpointType, "e1", "n2", cla(1, 3))
	expectACK(resource.EndpointType, "e1", "n2")
	good := map[string]uint32{"127.0.0.1:1000": 1, "127.0.0.1:2000": 3}
	waitFor(t, "the good endpoints", func() bool { return sameWeights(rec.snapshot(), good) })
	goodVersion := rec.snapshot().Version

	// A CLA with a zero weight is NACKed; the last good endpoints stay.
	f.resps <- response(t, resource.EndpointType, "e2", "n3", cla(1, 0, 2))
	expectNACK(resource.EndpointType, "e1", "n3", `ClusterLoadAssignment "api": endpoint 1 (127.0.0.1:2000) has load_balancing_weight 0`)
	if s := rec.snapshot(); !sameWeights(s, good) || s.Version != goodVersion {
		t.Fatalf("after the NACK the watcher has %v (version %d), want the last good snapshot", weights(s), s.Version)
	}

	// A cluster with an lb_policy we do not run is NACKed; its settings stay.
	bad := Cluster(Defaults("api"))
	bad.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
	f.resps <- response(t, resource.ClusterType, "c2", "n4", bad)
	expectNACK(resource.ClusterType, "c1", "n4", `Cluster "api": lb_policy CLUSTER_PROVIDED is not supported`)

	// A resource of the wrong type is NACKed too.
	f.resps <- response(t, resource.EndpointType, "e3", "n5", Cluster(Defaults("api")))
	expectNACK(resource.EndpointType, "e1", "n5", "resource 0 is a type.googleapis.com/envoy.config.cluster.v3.Cluster")

	st := c.Stats()
	eds, cds := st.Types[resource.EndpointType], st.Types[resource.ClusterType]
	if eds.NACKs != 2 || eds.ACKs != 1 || eds.Version != "e1" || eds.LastNACK == nil || eds.LastNACK.Version != "e3" {
		t.Errorf("EDS stats %+v, want 1 ACK, 2 NACKs, version e1, last NACK of e3", eds)
	}
	if cds.NACKs != 1 || cds.LastNACK == nil || !strings.Contains(cds.LastNACK.Detail, "CLUSTER_PROVIDED") {
		t.Errorf("CDS stats %+v, want the lb_policy NACK", cds)
	}
	mu.Lock()
	if len(settings) != 1 || settings[0].LBPolicy != balancer.RoundRobin {
		t.Errorf("settings delivered %+v, want only the first good one", settings)
	}
	mu.Unlock()

	// A good update after NACKs is accepted.
	f.resps <- response(t, resource.EndpointType, "e4", "n6", cla(2, 2))
	expectACK(resource.EndpointType, "e4", "n6")
	waitFor(t, "the next good endpoints", func() bool {
		return sameWeights(rec.snapshot(), map[string]uint32{"127.0.0.1:1000": 2, "127.0.0.1:2000": 2})
	})
}

// The control plane restarts: the client keeps serving through the
// outage, reconnects, resubscribes and catches up.
func TestClientSurvivesServerRestart(t *testing.T) {
	src := &fakeSource{}
	src.Publish(mustSnap(t, "api", 1, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 1}))
	srv1, err := NewServer(ServerOptions{Source: src, Upstreams: []Upstream{{Service: "api"}}})
	if err != nil {
		t.Fatal(err)
	}
	lis := listen(t, "127.0.0.1:0")
	addr := lis.Addr().String()
	stop1 := serve(t, srv1, lis)

	c := newClient(t, addr)
	var rec recorder
	defer c.Watch("api", &rec)()
	waitFor(t, "the first endpoints", func() bool {
		return sameWeights(rec.snapshot(), map[string]uint32{"127.0.0.1:7001": 1})
	})

	stop1()
	waitFor(t, "an ambient error", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return errors.Is(rec.ambErr, discovery.ErrUnavailable)
	})
	if !sameWeights(rec.snapshot(), map[string]uint32{"127.0.0.1:7001": 1}) {
		t.Fatalf("during the outage the watcher has %v, want the last endpoints", weights(rec.snapshot()))
	}
	if c.Stats().Connected {
		t.Fatal("Stats().Connected during the outage")
	}

	// A new control plane on the same address, with changed endpoints.
	src2 := &fakeSource{}
	src2.Publish(mustSnap(t, "api", 1,
		discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 2},
		discovery.Endpoint{Address: "127.0.0.1:7002", Weight: 8}))
	srv2, err := NewServer(ServerOptions{Source: src2, Upstreams: []Upstream{{Service: "api"}}})
	if err != nil {
		t.Fatal(err)
	}
	serve(t, srv2, listen(t, addr))
	waitFor(t, "the client to catch up", func() bool {
		return sameWeights(rec.snapshot(), map[string]uint32{"127.0.0.1:7001": 2, "127.0.0.1:7002": 8})
	})
	st := c.Stats()
	if !st.Connected || st.Streams < 2 {
		t.Fatalf("stats %+v, want connected on a second stream", st)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.resErr != nil {
		t.Fatalf("resource error %v: an outage must not drop endpoints", rec.resErr)
	}
}

func TestClientConfigValidate(t *testing.T) {
	tests := []struct {
		cfg  ClientConfig
		want string
	}{
		{ClientConfig{}, "discovery.xds.address: must not be empty"},
		{ClientConfig{Address: AddressList{}}, "discovery.xds.address: must not be empty"},
		{ClientConfig{Address: AddressList{"localhost"}}, `discovery.xds.address: "localhost" is not host:port`},
		{ClientConfig{Address: AddressList{"a:1", "b"}}, `discovery.xds.address[1]: "b" is not host:port`},
		{ClientConfig{Address: AddressList{"a:1"}, TLS: &TLSConfig{CertFile: "c.pem"}}, "discovery.xds.tls: cert_file and key_file go together"},
		{ClientConfig{Address: AddressList{"a:1"}, TLS: &TLSConfig{CAFile: "/nonexistent/ca.pem"}}, "tls.ca_file"},
	}
	for _, tt := range tests {
		_, err := NewClient(tt.cfg, ClientOptions{})
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewClient(%+v) = %v, want ErrConfig containing %q", tt.cfg, err, tt.want)
		}
	}
}

// A weight change reaches the client as EDS responses only, a cluster
// setting change as CDS only (counted per type at the client).
func TestPushesOnlyChangedTypes(t *testing.T) {
	src := &fakeSource{}
	src.Publish(mustSnap(t, "api", 1, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 1}))
	src.Publish(mustSnap(t, "web", 1, discovery.Endpoint{Address: "127.0.0.1:8001", Weight: 1}))
	srv, err := NewServer(ServerOptions{Source: src, Upstreams: []Upstream{Defaults("api"), Defaults("web")}})
	if err != nil {
		t.Fatal(err)
	}
	lis := listen(t, "127.0.0.1:0")
	stop := serve(t, srv, lis)
	defer stop()

	c := newClient(t, lis.Addr().String())
	var api, web recorder
	defer c.Watch("api", &api)()
	defer c.Watch("web", &web)()
	var mu sync.Mutex
	var policies []string
	defer c.WatchCluster("api", func(cs upstream.Settings) {
		mu.Lock()
		policies = append(policies, cs.LBPolicy)
		mu.Unlock()
	})()
	synced := func() bool {
		st := c.Stats()
		for _, typ := range clientTypes {
			if ts := st.Types[typ]; ts == nil || ts.Version != srv.Versions()[typ] || ts.ACKs != ts.Updates {
				return false
			}
		}
		return true
	}
	waitFor(t, "the first sync", synced)
	counts := func() map[string]uint64 {
		out := map[string]uint64{}
		for typ, ts := range c.Stats().Types {
			out[typ] = ts.Updates
		}
		return out
	}
	before := counts()

	src.Publish(mustSnap(t, "api", 2, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: 9}))
	waitFor(t, "the weight change", func() bool { return sameWeights(api.snapshot(), map[string]uint32{"127.0.0.1:7001": 9}) })
	settings := Defaults("api")
	settings.Settings.LBPolicy = balancer.LeastRequest
	if err := srv.SetSettings([]Upstream{settings, Defaults("web")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the setting change", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(policies) > 0 && policies[len(policies)-1] == balancer.LeastRequest
	})
	waitFor(t, "the second sync", synced)
	after := counts()
	for _, typ := range clientTypes {
		want := uint64(0)
		if typ == resource.EndpointType || typ == resource.ClusterType {
			want = 1 // one weight change, one setting change
		}
		if got := after[typ] - before[typ]; got != want {
			t.Errorf("%s: %d responses for one weight change and one setting change, want %d", typeLabel(typ), got, want)
		}
	}
}
