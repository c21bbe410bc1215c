package xds

import (
	"context"
	"slices"
	"testing"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

type sotwADS = discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient

// sotwHarness is the delta tests' server and connection, and per stream
// the nonce of its last barrier response.
type sotwHarness struct {
	*deltaHarness
	barriers map[sotwADS]string
}

func newSotwHarness(t *testing.T) *sotwHarness {
	return &sotwHarness{deltaHarness: newDeltaHarness(t), barriers: map[sotwADS]string{}}
}

func (h *sotwHarness) sotwADS() sotwADS {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	h.t.Cleanup(cancel)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(h.conn).StreamAggregatedResources(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

func sotwSend(t *testing.T, st interface {
	Send(*discoveryv3.DiscoveryRequest) error
}, req *discoveryv3.DiscoveryRequest) {
	t.Helper()
	if err := st.Send(req); err != nil {
		t.Fatal(err)
	}
}

// sotwExpect receives the next response and checks its type, resources
// and version (the type's served version).
func sotwExpect(t *testing.T, h *sotwHarness, st interface {
	Recv() (*discoveryv3.DiscoveryResponse, error)
}, step, typeURL string, names ...string) *discoveryv3.DiscoveryResponse {
	t.Helper()
	resp, err := st.Recv()
	if err != nil {
		t.Fatalf("%s: %v", step, err)
	}
	var got []string
	for _, a := range resp.GetResources() {
		got = append(got, resourceName(t, typeURL, a))
	}
	want := h.srv.Versions()[typeURL]
	if resp.GetTypeUrl() != typeURL || !slices.Equal(got, names) || resp.GetVersionInfo() != want || resp.GetNonce() == "" {
		t.Fatalf("%s: response %s version %q nonce %q resources %v; want %s version %q resources %v",
			step, typeLabel(resp.GetTypeUrl()), resp.GetVersionInfo(), resp.GetNonce(), got, typeLabel(typeURL), want, names)
	}
	return resp
}

func resourceName(t *testing.T, typeURL string, a *anypb.Any) string {
	t.Helper()
	if a.GetTypeUrl() != typeURL {
		t.Fatalf("resource of type %s in a %s response", a.GetTypeUrl(), typeURL)
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	return resourceNameOf(m)
}

func resourceNameOf(m any) string {
	if n, ok := m.(interface{ GetName() string }); ok {
		return n.GetName()
	}
	return m.(interface{ GetClusterName() string }).GetClusterName()
}

// ack acknowledges resp (the names of its type as requested: names).
func ack(t *testing.T, st sotwADS, resp *discoveryv3.DiscoveryResponse, names ...string) {
	t.Helper()
	sotwSend(t, st, &discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(), ResourceNames: names})
}

// sotwBarrier asks for LDS without its version (answered at once) and
// waits for the response: the server has then handled every request sent
// on st before, and sent nothing for them.
func sotwBarrier(t *testing.T, h *sotwHarness, st sotwADS) {
	t.Helper()
	nonce := h.barriers[st]
	sotwSend(t, st, &discoveryv3.DiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: nonce})
	resp, err := st.Recv()
	if err != nil || resp.GetTypeUrl() != resource.ListenerType || resp.GetVersionInfo() != h.srv.Versions()[resource.ListenerType] {
		t.Fatalf("barrier: response %s version %q (%v); want the Listener response", typeLabel(resp.GetTypeUrl()), resp.GetVersionInfo(), err)
	}
	h.barriers[st] = resp.GetNonce()
}

// An empty CDS request is a wildcard: every cluster, then every cluster
// again at each new CDS version. An ACK gets nothing.
func TestSotwWildcardCDS(t *testing.T) {
	h := newSotwHarness(t)
	st := h.sotwADS()
	sotwSend(t, st, &discoveryv3.DiscoveryRequest{Node: nodeProto("a"), TypeUrl: resource.ClusterType})
	r := sotwExpect(t, h, st, "wildcard", resource.ClusterType, "api", "web")
	ack(t, st, r)
	sotwBarrier(t, h, st)
	if err := h.srv.SetSettings([]Upstream{{Service: "api"}, {Service: "db"}, {Service: "web"}}); err != nil {
		t.Fatal(err)
	}
	r2 := sotwExpect(t, h, st, "db added", resource.ClusterType, "api", "db", "web")
	if r2.GetVersionInfo() == r.GetVersionInfo() || r2.GetNonce() == r.GetNonce() {
		t.Fatalf("second response version %q nonce %q, first %q %q", r2.GetVersionInfo(), r2.GetNonce(), r.GetVersionInfo(), r.GetNonce())
	}
	// The client is on /clients with the version it ACKed.
	ack(t, st, r2)
	sotwBarrier(t, h, st)
	var found bool
	for _, c := range h.srv.Clients() {
		if c.Node == "a" {
			found = true
			if c.Delta || c.Stream >= deltaStreamIDBase || c.ACKed[resource.ClusterType] != r2.GetVersionInfo() {
				t.Fatalf("client %+v; want a SotW stream (id below %d) that ACKed CDS %q", c, int64(deltaStreamIDBase), r2.GetVersionInfo())
			}
		}
	}
	if !found {
		t.Fatalf("clients %+v: no node a", h.srv.Clients())
	}
}

// EDS by names: each stream gets the assignments it names; a change of
// the type answers every stream waiting on it, with everything it names
// (as go-control-plane's cache, which compares the type's version only)
// and the new version; a request naming more is answered at once.
func TestSotwEDSByNamesPushToEverySubscriber(t *testing.T) {
	h := newSotwHarness(t)
	a, b := h.sotwADS(), h.sotwADS()
	sotwSend(t, a, &discoveryv3.DiscoveryRequest{Node: nodeProto("a"), TypeUrl: resource.EndpointType, ResourceNames: []string{"api"}})
	sotwSend(t, b, &discoveryv3.DiscoveryRequest{Node: nodeProto("b"), TypeUrl: resource.EndpointType, ResourceNames: []string{"web"}})
	ra := sotwExpect(t, h, a, "a names api", resource.EndpointType, "api")
	rb := sotwExpect(t, h, b, "b names web", resource.EndpointType, "web")
	ack(t, a, ra, "api")
	ack(t, b, rb, "web")
	sotwBarrier(t, h, a)
	sotwBarrier(t, h, b)

	h.publish("api", 3)
	ra = sotwExpect(t, h, a, "a: api changed", resource.EndpointType, "api")
	rb = sotwExpect(t, h, b, "b: EDS version moved", resource.EndpointType, "web")
	if ra.GetVersionInfo() != rb.GetVersionInfo() {
		t.Fatalf("versions %q and %q for one EDS snapshot", ra.GetVersionInfo(), rb.GetVersionInfo())
	}
	// Naming web too, at the current version: answered at once.
	ack(t, a, ra, "api", "web")
	ra = sotwExpect(t, h, a, "a names web too", resource.EndpointType, "api", "web")
	ack(t, a, ra, "api", "web")
	// Naming fewer at the same version: nothing to send.
	ack(t, a, ra, "api")
	sotwBarrier(t, h, a)
	// Naming web again: it was dropped from what a has, so it is
	// answered at once even though the version did not move.
	ack(t, a, ra, "api", "web")
	sotwExpect(t, h, a, "a names web again", resource.EndpointType, "api", "web")
}

// A NACK of the last response gets nothing until the type's next
// version; a request with an older nonce is stale and ignored.
func TestSotwNACKAndStaleNonce(t *testing.T) {
	h := newSotwHarness(t)
	st := h.sotwADS()
	sotwSend(t, st, &discoveryv3.DiscoveryRequest{Node: nodeProto("a"), TypeUrl: resource.EndpointType, ResourceNames: []string{"api"}})
	r1 := sotwExpect(t, h, st, "first", resource.EndpointType, "api")
	sotwSend(t, st, &discoveryv3.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: []string{"api"}, ResponseNonce: r1.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "rejected"}})
	sotwBarrier(t, h, st)
	h.publish("api", 5)
	r2 := sotwExpect(t, h, st, "after the NACK, the next version", resource.EndpointType, "api")
	if r2.GetVersionInfo() == r1.GetVersionInfo() {
		t.Fatalf("version %q again after a NACK", r2.GetVersionInfo())
	}
	// r1's nonce is stale now: naming web with it is ignored.
	sotwSend(t, st, &discoveryv3.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: []string{"api", "web"}, VersionInfo: r1.GetVersionInfo(), ResponseNonce: r1.GetNonce()})
	sotwBarrier(t, h, st)
	// With r2's nonce it is answered.
	ack(t, st, r2, "api", "web")
	sotwExpect(t, h, st, "names web with the last nonce", resource.EndpointType, "api", "web")
}

// A client reconnecting (to this server or a replica serving the same
// versions) with the version it ACKed gets the resources again at that
// version, as from go-control-plane: its new stream has returned nothing.
func TestSotwReconnectWithACKedVersion(t *testing.T) {
	h := newSotwHarness(t)
	st := h.sotwADS()
	sotwSend(t, st, &discoveryv3.DiscoveryRequest{Node: nodeProto("a"), TypeUrl: resource.ClusterType})
	r := sotwExpect(t, h, st, "first stream", resource.ClusterType, "api", "web")
	ack(t, st, r)
	sotwBarrier(t, h, st)

	again := h.sotwADS()
	sotwSend(t, again, &discoveryv3.DiscoveryRequest{Node: nodeProto("a"), TypeUrl: resource.ClusterType, VersionInfo: r.GetVersionInfo()})
	r2 := sotwExpect(t, h, again, "reconnected", resource.ClusterType, "api", "web")
	if r2.GetVersionInfo() != r.GetVersionInfo() {
		t.Fatalf("version %q after reconnecting, was %q", r2.GetVersionInfo(), r.GetVersionInfo())
	}
	sotwSend(t, again, &discoveryv3.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: []string{"web"}, VersionInfo: h.srv.Versions()[resource.EndpointType]})
	sotwExpect(t, h, again, "reconnected EDS", resource.EndpointType, "web")
}

// ADS needs a type URL; a per-type service does not.
func TestSotwTypeURL(t *testing.T) {
	h := newSotwHarness(t)
	st := h.sotwADS()
	sotwSend(t, st, &discoveryv3.DiscoveryRequest{Node: nodeProto("a")})
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ADS request without type URL: %v, want InvalidArgument", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cds, err := clusterservice.NewClusterDiscoveryServiceClient(h.conn).StreamClusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sotwSend(t, cds, &discoveryv3.DiscoveryRequest{Node: nodeProto("b")})
	sotwExpect(t, h, cds, "CDS service", resource.ClusterType, "api", "web")
}

// Streams asking one snapshot for the same names share one resource list.
func TestSotwBodiesShared(t *testing.T) {
	ds, err := newDeltaSnapshot(resource.ClusterType, "v1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	sn := &sotwSnap{ds: ds}
	var sets nameSets
	x, y := sets.get([]string{"a", "b"}), sets.get([]string{"a", "b"})
	if bx, by := sn.body(false, x), sn.body(false, y); bx != by {
		t.Fatal("two bodies for one name set")
	}
	if sn.body(true, nil) != sn.body(true, x) || sn.body(true, nil) == sn.body(false, x) {
		t.Fatal("wildcard bodies not shared, or shared with a named one")
	}
}

// A new version reaches a stream that has not ACKed the last response
// when it does (go-control-plane's cache has no watch for it until then):
// its ACK of the older version is answered at once with the new one, and
// only once. A type the server does not serve is never answered.
func TestSotwNewVersionBeforeACK(t *testing.T) {
	h := newSotwHarness(t)
	st := h.sotwADS()
	sotwSend(t, st, &discoveryv3.DiscoveryRequest{Node: nodeProto("a"), TypeUrl: resource.EndpointType, ResourceNames: []string{"api"}})
	r1 := sotwExpect(t, h, st, "first", resource.EndpointType, "api")
	h.publish("api", 7)
	ack(t, st, r1, "api")
	r2 := sotwExpect(t, h, st, "ACK of the older version", resource.EndpointType, "api")
	if r2.GetVersionInfo() == r1.GetVersionInfo() {
		t.Fatalf("version %q again", r2.GetVersionInfo())
	}
	ack(t, st, r2, "api")
	sotwSend(t, st, &discoveryv3.DiscoveryRequest{TypeUrl: resource.SecretType})
	sotwBarrier(t, h, st)
}
