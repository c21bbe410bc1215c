package xds

import (
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	deltav3 "github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"google.golang.org/grpc"
)

// handlers serves ADS and CDS/EDS/LDS/RDS: state of the world on our
// own handler (sotwServer, sotw.go), delta too (deltaServer, delta.go).
//
// go-control-plane's pkg/server/v3 does the same, but it also links the
// rate-limit config service, which lives in a separate module
// (go-control-plane/ratelimit) that is not in our go.mod; the stream
// handlers are all the five services need. The REST Fetch methods answer
// Unimplemented.
type handlers struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	clusterservice.UnimplementedClusterDiscoveryServiceServer
	endpointservice.UnimplementedEndpointDiscoveryServiceServer
	listenerservice.UnimplementedListenerDiscoveryServiceServer
	routeservice.UnimplementedRouteDiscoveryServiceServer

	sotw  *sotwServer
	delta *deltaServer
}

type callbacks interface {
	sotwv3.Callbacks
	deltav3.Callbacks
}

func newHandlers(sotw *sotwServer, delta *deltaServer) *handlers {
	return &handlers{sotw: sotw, delta: delta}
}

func (h *handlers) register(g *grpc.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, h)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, h)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, h)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, h)
	routeservice.RegisterRouteDiscoveryServiceServer(g, h)
}

func (h *handlers) StreamAggregatedResources(s discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return h.sotw.handle(s, resource.AnyType)
}

func (h *handlers) DeltaAggregatedResources(s discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return h.delta.handle(s, resource.AnyType)
}

func (h *handlers) StreamClusters(s clusterservice.ClusterDiscoveryService_StreamClustersServer) error {
	return h.sotw.handle(s, resource.ClusterType)
}

func (h *handlers) DeltaClusters(s clusterservice.ClusterDiscoveryService_DeltaClustersServer) error {
	return h.delta.handle(s, resource.ClusterType)
}

func (h *handlers) StreamEndpoints(s endpointservice.EndpointDiscoveryService_StreamEndpointsServer) error {
	return h.sotw.handle(s, resource.EndpointType)
}

func (h *handlers) DeltaEndpoints(s endpointservice.EndpointDiscoveryService_DeltaEndpointsServer) error {
	return h.delta.handle(s, resource.EndpointType)
}

func (h *handlers) StreamListeners(s listenerservice.ListenerDiscoveryService_StreamListenersServer) error {
	return h.sotw.handle(s, resource.ListenerType)
}

func (h *handlers) DeltaListeners(s listenerservice.ListenerDiscoveryService_DeltaListenersServer) error {
	return h.delta.handle(s, resource.ListenerType)
}

func (h *handlers) StreamRoutes(s routeservice.RouteDiscoveryService_StreamRoutesServer) error {
	return h.sotw.handle(s, resource.RouteType)
}

func (h *handlers) DeltaRoutes(s routeservice.RouteDiscoveryService_DeltaRoutesServer) error {
	return h.delta.handle(s, resource.RouteType)
}
