package xds

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/upstream"
)

// deltaHarness is a Server on loopback serving api and web from a fake
// source, and a gRPC connection to it.
type deltaHarness struct {
	t    *testing.T
	src  *fakeSource
	srv  *Server
	conn *grpc.ClientConn
	gen  uint64
}

func newDeltaHarness(t *testing.T) *deltaHarness {
	t.Helper()
	h := &deltaHarness{t: t, src: &fakeSource{}}
	h.publish("api", 1)
	h.publish("web", 1)
	srv, err := NewServer(ServerOptions{Source: h.src, Upstreams: []Upstream{{Service: "api"}, {Service: "web"}}})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	lis := listen(t, "127.0.0.1:0")
	serve(t, srv, lis)
	h.conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.conn.Close() })
	return h
}

// publish sets one endpoint of weight w for svc (a new EDS content).
func (h *deltaHarness) publish(svc string, w uint32) {
	h.t.Helper()
	h.gen++
	h.src.Publish(mustSnap(h.t, svc, h.gen, discovery.Endpoint{Address: "127.0.0.1:7001", Weight: w}))
}

type deltaADS = discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient

func (h *deltaHarness) ads() deltaADS {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	h.t.Cleanup(cancel)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(h.conn).DeltaAggregatedResources(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

func send(t *testing.T, st deltaADS, req *discoveryv3.DeltaDiscoveryRequest) {
	t.Helper()
	if err := st.Send(req); err != nil {
		t.Fatal(err)
	}
}

// recvNames receives the next response and ACKs it; it returns the
// response and its resource names (sorted).
func recvNames(t *testing.T, st deltaADS) (*discoveryv3.DeltaDiscoveryResponse, []string) {
	t.Helper()
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()})
	var names []string
	for _, r := range resp.GetResources() {
		names = append(names, r.GetName())
	}
	slices.Sort(names)
	return resp, names
}

// expect receives the next response and checks its type, resources and
// removed resources.
func expect(t *testing.T, st deltaADS, step, typeURL string, names []string, removed []string) *discoveryv3.DeltaDiscoveryResponse {
	t.Helper()
	resp, got := recvNames(t, st)
	gotRemoved := slices.Sorted(slices.Values(resp.GetRemovedResources()))
	if resp.GetTypeUrl() != typeURL || !slices.Equal(got, names) || !slices.Equal(gotRemoved, removed) {
		t.Fatalf("%s: response %s resources %v removed %v; want %s %v removed %v",
			step, typeLabel(resp.GetTypeUrl()), got, gotRemoved, typeLabel(typeURL), names, removed)
	}
	return resp
}

// barrier subscribes name of typeURL (not subscribed yet on st) and
// waits for its response: the server has then handled every request sent
// on st before.
func barrier(t *testing.T, st deltaADS, typeURL, name string) {
	t.Helper()
	send(t, st, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: []string{name}})
	expect(t, st, "barrier", typeURL, []string{name}, nil)
}

func edsWeight(t *testing.T, r *discoveryv3.Resource) uint32 {
	t.Helper()
	cla := &endpointv3.ClusterLoadAssignment{}
	if err := r.GetResource().UnmarshalTo(cla); err != nil {
		t.Fatal(err)
	}
	return cla.Endpoints[0].LbEndpoints[0].LoadBalancingWeight.GetValue()
}

var leastRequest = upstream.Settings{LBPolicy: balancer.LeastRequest}

// An empty first subscribe is a (legacy) wildcard, as is an explicit "*":
// both get every resource of the type, then what is added and removed.
func TestDeltaWildcard(t *testing.T) {
	h := newDeltaHarness(t)
	legacy, explicit := h.ads(), h.ads()
	send(t, legacy, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("legacy"), TypeUrl: resource.ClusterType})
	send(t, explicit, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("explicit"), TypeUrl: resource.ClusterType, ResourceNamesSubscribe: []string{"*"}})
	for _, st := range []deltaADS{legacy, explicit} {
		expect(t, st, "wildcard", resource.ClusterType, []string{"api", "web"}, nil)
	}
	if err := h.srv.SetSettings([]Upstream{{Service: "api"}, {Service: "db"}}); err != nil {
		t.Fatal(err)
	}
	var last *discoveryv3.DeltaDiscoveryResponse
	for _, st := range []deltaADS{legacy, explicit} {
		last = expect(t, st, "web replaced by db", resource.ClusterType, []string{"db"}, []string{"web"})
	}
	// A name subscribed on the legacy wildcard stream ends the legacy
	// mode but not the wildcard (Envoy's protocol description);
	// unsubscribing "*" ends it: then only the named resource follows.
	send(t, legacy, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResourceNamesSubscribe: []string{"api"}, ResponseNonce: last.GetNonce()})
	send(t, legacy, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResourceNamesUnsubscribe: []string{"*"}, ResponseNonce: last.GetNonce()})
	barrier(t, legacy, resource.EndpointType, "api")
	if err := h.srv.SetSettings([]Upstream{{Service: "api"}, {Service: "db"}, {Service: "web"}}); err != nil {
		t.Fatal(err)
	}
	expect(t, explicit, "web back", resource.ClusterType, []string{"web"}, nil)
	if err := h.srv.SetSettings([]Upstream{{Service: "api", Settings: leastRequest}, {Service: "web"}}); err != nil {
		t.Fatal(err)
	}
	expect(t, explicit, "api changed, db gone", resource.ClusterType, []string{"api"}, []string{"db"})
	// The legacy stream, no longer wildcard, hears of api only: web's
	// return and db's removal were not its business.
	expect(t, legacy, "api changed", resource.ClusterType, []string{"api"}, nil)
}

// Subscribe and unsubscribe: the client gets what it subscribes to, once,
// and nothing of what it unsubscribed; a change sends only the changed
// names, and only to their subscribers.
func TestDeltaSubscribeUnsubscribe(t *testing.T) {
	h := newDeltaHarness(t)
	a, b := h.ads(), h.ads()
	send(t, a, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("a"), TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"api"}})
	send(t, b, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("b"), TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"web"}})
	r := expect(t, a, "a subscribes api", resource.EndpointType, []string{"api"}, nil)
	expect(t, b, "b subscribes web", resource.EndpointType, []string{"web"}, nil)

	send(t, a, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"web", "api"}, ResponseNonce: r.GetNonce()})
	r = expect(t, a, "a adds web (api not again)", resource.EndpointType, []string{"web"}, nil)

	h.publish("api", 3)
	r = expect(t, a, "api changed", resource.EndpointType, []string{"api"}, nil)
	if w := edsWeight(t, r.GetResources()[0]); w != 3 {
		t.Fatalf("api weight %d, want 3", w)
	}
	if r.GetSystemVersionInfo() != h.srv.Versions()[resource.EndpointType] || r.GetResources()[0].GetVersion() == "" {
		t.Fatalf("system version %q (served %q), resource version %q", r.GetSystemVersionInfo(), h.srv.Versions()[resource.EndpointType], r.GetResources()[0].GetVersion())
	}
	// b, subscribed to web only, heard nothing of api: its next
	// response is web's change.
	h.publish("web", 4)
	expect(t, b, "b: web changed", resource.EndpointType, []string{"web"}, nil)
	r = expect(t, a, "a: web changed", resource.EndpointType, []string{"web"}, nil)

	send(t, a, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesUnsubscribe: []string{"api"}, ResponseNonce: r.GetNonce()})
	barrier(t, a, resource.ClusterType, "api")
	h.publish("api", 5)
	h.publish("web", 5)
	expect(t, a, "a after unsubscribing api", resource.EndpointType, []string{"web"}, nil)
	// Subscribed again, api comes again (the client dropped it).
	send(t, a, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"api"}, ResponseNonce: r.GetNonce()})
	expect(t, a, "a subscribes api again", resource.EndpointType, []string{"api"}, nil)
}

// A client reconnecting with initial_resource_versions (to this server or
// a replica) gets nothing it already has, and a resource whose version
// differs.
func TestDeltaReconnectInitialVersions(t *testing.T) {
	h := newDeltaHarness(t)
	first := h.ads()
	send(t, first, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("n"), TypeUrl: resource.ClusterType, ResourceNamesSubscribe: []string{"api", "web"}})
	r := expect(t, first, "first stream", resource.ClusterType, []string{"api", "web"}, nil)
	have := map[string]string{}
	for _, res := range r.GetResources() {
		have[res.GetName()] = res.GetVersion()
	}

	again := h.ads()
	send(t, again, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("n"), TypeUrl: resource.ClusterType,
		ResourceNamesSubscribe: []string{"api", "web"}, InitialResourceVersions: have})
	stale := h.ads()
	send(t, stale, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("s"), TypeUrl: resource.ClusterType,
		ResourceNamesSubscribe: []string{"api", "web"}, InitialResourceVersions: map[string]string{"api": have["api"], "web": "old"}})
	expect(t, stale, "stale web", resource.ClusterType, []string{"web"}, nil)
	if err := h.srv.SetSettings([]Upstream{{Service: "api", Settings: leastRequest}, {Service: "web"}}); err != nil {
		t.Fatal(err)
	}
	// The reconnected stream's first response is the change: nothing
	// came for what it had.
	r = expect(t, again, "reconnected", resource.ClusterType, []string{"api"}, nil)
	c := &clusterv3.Cluster{}
	if err := r.GetResources()[0].GetResource().UnmarshalTo(c); err != nil {
		t.Fatal(err)
	}
	if c.GetLbPolicy() != clusterv3.Cluster_LEAST_REQUEST {
		t.Fatalf("api lb policy %v, want LEAST_REQUEST", c.GetLbPolicy())
	}
}

// A service no longer served is sent as removed_resources to the streams
// that had it (CDS and EDS).
func TestDeltaRemoval(t *testing.T) {
	h := newDeltaHarness(t)
	st := h.ads()
	send(t, st, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("n"), TypeUrl: resource.ClusterType, ResourceNamesSubscribe: []string{"api", "web"}})
	expect(t, st, "CDS", resource.ClusterType, []string{"api", "web"}, nil)
	send(t, st, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"api", "web"}})
	expect(t, st, "EDS", resource.EndpointType, []string{"api", "web"}, nil)
	if err := h.srv.SetSettings([]Upstream{{Service: "api"}}); err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for range 2 {
		r, names := recvNames(t, st)
		if len(names) != 0 {
			t.Fatalf("%s: resources %v sent with the removal", typeLabel(r.GetTypeUrl()), names)
		}
		got[r.GetTypeUrl()] = r.GetRemovedResources()
	}
	for _, typ := range []string{resource.ClusterType, resource.EndpointType} {
		if !slices.Equal(got[typ], []string{"web"}) {
			t.Fatalf("%s removed %v, want [web]", typeLabel(typ), got[typ])
		}
	}
}

// A NACK is counted and shown with its detail and version, and does not
// bring the rejected resource again: the next response is the next change.
// An ACK of a nonce never sent (stale or unknown) changes nothing.
func TestDeltaNACKAndStaleNonce(t *testing.T) {
	h := newDeltaHarness(t)
	st := h.ads()
	send(t, st, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("n1"), TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"api", "web"}})
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	rejected := resp.GetSystemVersionInfo()
	send(t, st, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: resp.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "test: rejected"}})
	send(t, st, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: "12345"})
	waitFor(t, "the NACK and the stale ACK counted", func() bool { return h.srv.Stats().Requests == 3 })
	st0 := h.srv.Stats()
	if st0.NACKs != 1 || st0.NACKsByType[resource.EndpointType] != 1 || st0.LastNACK == nil ||
		st0.LastNACK.Detail != "test: rejected" || st0.LastNACK.Version != rejected {
		t.Fatalf("stats after the NACK: %d NACKs, by type %v, last %+v", st0.NACKs, st0.NACKsByType, st0.LastNACK)
	}
	cl := h.srv.Clients()
	if len(cl) != 1 || cl[0].Node != "n1" || !cl[0].Delta || cl[0].LastNACK == nil || cl[0].ACKed[resource.EndpointType] != "" {
		t.Fatalf("clients after the NACK and a stale ACK: %+v", cl)
	}
	h.publish("web", 7)
	r := expect(t, st, "after the NACK", resource.EndpointType, []string{"web"}, nil)
	if w := edsWeight(t, r.GetResources()[0]); w != 7 {
		t.Fatalf("web weight %d, want 7", w)
	}
	waitFor(t, "the ACK in /clients", func() bool {
		cl := h.srv.Clients()
		return len(cl) == 1 && cl[0].ACKed[resource.EndpointType] == r.GetSystemVersionInfo()
	})
}

// ADS requires a type URL; the per-type delta services imply it.
func TestDeltaTypeURL(t *testing.T) {
	h := newDeltaHarness(t)
	st := h.ads()
	send(t, st, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("n"), ResourceNamesSubscribe: []string{"api"}})
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ADS request without a type URL: %v, want InvalidArgument", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cds, err := clusterservice.NewClusterDiscoveryServiceClient(h.conn).DeltaClusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cds.Send(&discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("n"), ResourceNamesSubscribe: []string{"web"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := cds.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetTypeUrl() != resource.ClusterType || len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != "web" {
		t.Fatalf("DeltaClusters: %v, want the web Cluster", resp)
	}
}

// Many streams and changes at once (the send pool and the handlers
// racing): every stream ends with the last weights, each resource shared.
func TestDeltaManyStreams(t *testing.T) {
	h := newDeltaHarness(t)
	const n = 40
	states := make([]*streamWeights, n)
	var wg sync.WaitGroup
	errc := make(chan error, n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range n {
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(h.conn).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		states[i] = &streamWeights{weights: map[string]uint32{}, final: true}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: nodeProto(fmt.Sprint("n", i)), TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"api", "web"}}); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				resp, err := st.Recv()
				if err != nil {
					if ctx.Err() == nil {
						errc <- err
					}
					return
				}
				if err := states[i].record(resp); err != nil {
					errc <- err
				}
				if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: resp.GetNonce()}); err != nil {
					return
				}
			}
		}()
	}
	for w := uint32(2); w <= 10; w++ {
		h.publish("api", w)
		h.publish("web", w+100)
	}
	waitWeights(t, states, 10, 110)
	cancel()
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	waitFor(t, "the streams closed", func() bool { return h.srv.Stats().Streams == 0 && len(h.srv.Clients()) == 0 })
}

// blockingStream is a delta stream whose sends block until released.
type blockingStream struct {
	grpc.ServerStream
	release chan struct{}
	mu      sync.Mutex
	sent    int
}

func (b *blockingStream) Send(*discoveryv3.DeltaDiscoveryResponse) error {
	if b.release != nil {
		<-b.release
	}
	b.mu.Lock()
	b.sent++
	b.mu.Unlock()
	return nil
}

func (b *blockingStream) Recv() (*discoveryv3.DeltaDiscoveryRequest, error) {
	return nil, errors.New("not used")
}

func (b *blockingStream) sends() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sent
}

// A client whose sends block (it stopped reading) holds one sender: once
// every sender has been stuck for stuckAfter, another one serves the other
// streams.
func TestDeltaSendPoolStuckSender(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDeltaServer(context.Background(), nil)
		d.pool.size = 1
		items := map[string]types.Resource{"api": &endpointv3.ClusterLoadAssignment{ClusterName: "api"}}
		if err := d.set(resource.EndpointType, "v1", items); err != nil {
			t.Fatal(err)
		}
		stuck := &blockingStream{release: make(chan struct{})}
		fine := &blockingStream{}
		var streams []*deltaStream
		for _, bs := range []*blockingStream{stuck, fine} {
			s := &deltaStream{d: d, st: bs}
			sub := &deltaSub{typeURL: resource.EndpointType, names: d.sets.get([]string{"api"})}
			s.subs = append(s.subs, sub)
			streams = append(streams, s)
		}
		streams[0].kick(&d.pool)
		synctest.Wait() // the one sender is blocked in stuck's send
		streams[1].kick(&d.pool)
		synctest.Wait()
		if got := fine.sends(); got != 0 {
			t.Fatalf("%d sends to the other stream before the sender counts as stuck, want 0 (pool of 1)", got)
		}
		time.Sleep(d.pool.stuckAfter)
		synctest.Wait()
		if got := fine.sends(); got != 1 {
			t.Fatalf("%d sends to the other stream after the sender was stuck for %v, want 1", got, d.pool.stuckAfter)
		}
		close(stuck.release)
		synctest.Wait()
		if got := stuck.sends(); got != 1 {
			t.Fatalf("%d sends to the released stream, want 1", got)
		}
		if sets := len(d.sets.m); sets != 1 {
			t.Fatalf("%d name sets for two streams subscribing the same names, want 1 (shared)", sets)
		}
	})
}

// fakeDeltaStream is a delta stream driven by the test: Recv returns the
// requests of reqs until it is closed, then an error; every send after
// the first waits for release.
type fakeDeltaStream struct {
	grpc.ServerStream
	ctx     context.Context
	reqs    chan *discoveryv3.DeltaDiscoveryRequest
	release chan struct{}
	mu      sync.Mutex
	sent    int
}

func (f *fakeDeltaStream) Context() context.Context { return f.ctx }

func (f *fakeDeltaStream) Send(m *discoveryv3.DeltaDiscoveryResponse) error { return f.SendMsg(m) }

func (f *fakeDeltaStream) SendMsg(any) error {
	f.mu.Lock()
	f.sent++
	n := f.sent
	f.mu.Unlock()
	if n > 1 {
		<-f.release
	}
	return nil
}

func (f *fakeDeltaStream) Recv() (*discoveryv3.DeltaDiscoveryRequest, error) {
	r, ok := <-f.reqs
	if !ok {
		return nil, errors.New("stream ended")
	}
	return r, nil
}

// The handler does not return while a pool worker is still sending on its
// stream (grpc forbids a send after the handler returns).
func TestDeltaHandlerWaitsForSender(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDeltaServer(context.Background(), nil)
		set := func(w uint32) {
			cla := &endpointv3.ClusterLoadAssignment{ClusterName: "api", Endpoints: []*endpointv3.LocalityLbEndpoints{{LoadBalancingWeight: wrapperspb.UInt32(w)}}}
			if err := d.set(resource.EndpointType, fmt.Sprint("v", w), map[string]types.Resource{"api": cla}); err != nil {
				t.Fatal(err)
			}
		}
		set(1)
		f := &fakeDeltaStream{ctx: context.Background(), reqs: make(chan *discoveryv3.DeltaDiscoveryRequest, 1), release: make(chan struct{})}
		returned := make(chan error, 1)
		go func() { returned <- d.handle(f, resource.AnyType) }()
		f.reqs <- &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"api"}}
		synctest.Wait() // the first response sent by the handler
		set(2)          // a worker sends the change, and blocks
		synctest.Wait()
		close(f.reqs) // the client is gone
		synctest.Wait()
		select {
		case err := <-returned:
			t.Fatalf("handler returned (%v) while a send was in progress", err)
		default:
		}
		close(f.release)
		synctest.Wait()
		select {
		case err := <-returned:
			if err != nil {
				t.Fatalf("handler: %v", err)
			}
		default:
			t.Fatal("handler still running after the send ended")
		}
		if f.sent != 2 {
			t.Fatalf("%d sends, want 2", f.sent)
		}
	})
}

// A name subscribed before it exists is sent when it appears, and only
// to its subscriber.
func TestDeltaSubscribeBeforeItExists(t *testing.T) {
	h := newDeltaHarness(t)
	st := h.ads()
	send(t, st, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("n"), TypeUrl: resource.ClusterType, ResourceNamesSubscribe: []string{"db"}})
	// Nothing exists for db: no response; the barrier's is the first.
	barrier(t, st, resource.EndpointType, "api")
	if err := h.srv.SetSettings([]Upstream{{Service: "api"}, {Service: "web"}, {Service: "db"}}); err != nil {
		t.Fatal(err)
	}
	expect(t, st, "db appears", resource.ClusterType, []string{"db"}, nil)
	if err := h.srv.SetSettings([]Upstream{{Service: "api"}, {Service: "web"}}); err != nil {
		t.Fatal(err)
	}
	expect(t, st, "db gone", resource.ClusterType, nil, []string{"db"})
}

// A client reconnecting with initial_resource_versions of resources that
// are gone is told they are removed, as go-control-plane does: explicit
// names it subscribes to, and (wildcard) every name it says it has.
func TestDeltaReconnectGoneResources(t *testing.T) {
	h := newDeltaHarness(t)
	first := h.ads()
	send(t, first, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("n"), TypeUrl: resource.ClusterType, ResourceNamesSubscribe: []string{"api", "web"}})
	r := expect(t, first, "first stream", resource.ClusterType, []string{"api", "web"}, nil)
	have := map[string]string{}
	for _, res := range r.GetResources() {
		have[res.GetName()] = res.GetVersion()
	}
	if err := h.srv.SetSettings([]Upstream{{Service: "api"}}); err != nil {
		t.Fatal(err)
	}
	expect(t, first, "web removed", resource.ClusterType, nil, []string{"web"})

	named := h.ads()
	send(t, named, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("n"), TypeUrl: resource.ClusterType,
		ResourceNamesSubscribe: []string{"api", "web"}, InitialResourceVersions: have})
	expect(t, named, "named reconnect", resource.ClusterType, nil, []string{"web"})

	wildcard := h.ads()
	send(t, wildcard, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("w"), TypeUrl: resource.ClusterType,
		InitialResourceVersions: map[string]string{"api": have["api"], "web": have["web"], "db": "old"}})
	expect(t, wildcard, "wildcard reconnect", resource.ClusterType, nil, []string{"db", "web"})
}

// Clients subscribing and unsubscribing while changes are pushed (the
// handler's sends and the pool's racing on the subscription): after a
// last subscription to both names, every stream gets the last weights.
func TestDeltaSubscribeDuringPushes(t *testing.T) {
	h := newDeltaHarness(t)
	const n = 16
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	states := make([]*streamWeights, n)
	published := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(h.conn).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		states[i] = &streamWeights{weights: map[string]uint32{}}
		s := states[i]
		st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: nodeProto(fmt.Sprint("n", i)), TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"api"}})
		r := rand.New(rand.NewPCG(uint64(i), 2))
		wg.Add(2)
		go func() {
			defer wg.Done()
			for {
				resp, err := st.Recv()
				if err != nil {
					return
				}
				if err := s.record(resp); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for range 20 {
				req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType}
				nm := []string{"api", "web"}[r.IntN(2)]
				if r.IntN(2) == 0 {
					req.ResourceNamesUnsubscribe = []string{nm}
				} else {
					req.ResourceNamesSubscribe = []string{nm}
				}
				if st.Send(req) != nil {
					return
				}
				runtime.Gosched()
			}
			<-published
			st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"api", "web"}})
			s.mu.Lock()
			s.final = true
			s.mu.Unlock()
		}()
	}
	for w := uint32(2); w <= 30; w++ {
		h.publish("api", w)
		h.publish("web", w+100)
		if w == 15 {
			close(published)
		}
	}
	waitWeights(t, states, 30, 130)
	cancel()
	wg.Wait()
}

// streamWeights is what a test stream has received: each EDS resource's
// weight; final once the stream has sent its last subscription change.
type streamWeights struct {
	mu      sync.Mutex
	weights map[string]uint32
	final   bool
}

// record takes in a response's resources.
func (s *streamWeights) record(resp *discoveryv3.DeltaDiscoveryResponse) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range resp.GetResources() {
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := r.GetResource().UnmarshalTo(cla); err != nil {
			return fmt.Errorf("%s: %w", r.GetName(), err)
		}
		s.weights[r.GetName()] = cla.Endpoints[0].LbEndpoints[0].LoadBalancingWeight.GetValue()
	}
	return nil
}

// waitWeights waits until every stream is final with api and web at
// these weights.
func waitWeights(t *testing.T, states []*streamWeights, api, web uint32) {
	t.Helper()
	waitFor(t, "every stream at the last weights", func() bool {
		for _, s := range states {
			s.mu.Lock()
			ok := s.final && s.weights["api"] == api && s.weights["web"] == web
			s.mu.Unlock()
			if !ok {
				return false
			}
		}
		return true
	})
}

// TestDeltaUnknownTypeURLsBounded: a client naming type URLs the server
// does not serve (as ACKs, with nonces) gets no answer for them, holds no
// subscription for them, and grows no per-type stat: they count as
// "other"; the stream serves the real types as before.
func TestDeltaUnknownTypeURLsBounded(t *testing.T) {
	h := newDeltaHarness(t)
	st := h.ads()
	for i := range 200 {
		send(t, st, &discoveryv3.DeltaDiscoveryRequest{Node: nodeProto("n"), TypeUrl: fmt.Sprintf("type.googleapis.com/x.T%d", i),
			ResourceNamesSubscribe: []string{"api"}, ResponseNonce: strconv.Itoa(i + 1)})
	}
	barrier(t, st, resource.ClusterType, "api") // every request above was handled
	stats := h.srv.Stats()
	for k := range stats.ACKsByType {
		if k != otherType && !servedType(k) {
			t.Errorf("acks_by_type has %q", k)
		}
	}
	if stats.ACKsByType[otherType] < 200 {
		t.Errorf("acks_by_type[other] = %d, want the 200 requests", stats.ACKsByType[otherType])
	}
	for _, c := range h.srv.Clients() {
		if len(c.ACKed) > 4 {
			t.Errorf("client %s holds ACKed versions of %d types", c.Node, len(c.ACKed))
		}
	}
	h.srv.delta.mu.Lock()
	defer h.srv.delta.mu.Unlock()
	for s := range h.srv.delta.streams {
		s.mu.Lock()
		n := len(s.subs)
		s.mu.Unlock()
		if n != 1 {
			t.Errorf("a stream holds %d subscriptions, want 1 (CDS)", n)
		}
	}
}
