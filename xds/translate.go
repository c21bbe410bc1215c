package xds

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	maglevv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/maglev/v3"
	randomv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/random/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/discovery"
)

// Extension names of the load-balancing policies in
// Cluster.load_balancing_policy (Envoy's names).
const (
	policyRandom       = "envoy.load_balancing_policies.random"
	policyRoundRobin   = "envoy.load_balancing_policies.round_robin"
	policyLeastRequest = "envoy.load_balancing_policies.least_request"
	policyRingHash     = "envoy.load_balancing_policies.ring_hash"
	policyMaglev       = "envoy.load_balancing_policies.maglev"
	routerFilterName   = "envoy.filters.http.router"
	// metaNamespace holds an endpoint's discovery metadata in
	// LbEndpoint.metadata.filter_metadata.
	metaNamespace = "sidemesh"
)

// Resources translates cluster settings and endpoint snapshots into xDS
// resources, one set per service in settings:
//
//   - a Cluster of type EDS (config source ADS) carrying the lb policy,
//     outlier detection, circuit breakers and health checks;
//   - a ClusterLoadAssignment with one locality (weight 1, which gRPC
//     requires) whose endpoints carry load_balancing_weight and health;
//     a service without a snapshot gets an empty assignment;
//   - for proxyless gRPC clients, an API Listener named after the service
//     (HttpConnectionManager with RDS over ADS and the router filter) and a
//     RouteConfiguration of the same name routing every path of domain
//     SERVICE to cluster SERVICE.
//
// Resources of each type are sorted by name. Resources is pure.
//
// An endpoint whose address is not IP:port cannot be expressed in EDS; it
// is left out and named in the returned error. The map is complete either
// way: a non-nil error means "translated without these endpoints".
func Resources(settings []ClusterSettings, snaps map[string]*discovery.Snapshot) (map[resource.Type][]types.Resource, error) {
	sorted := make([]ClusterSettings, len(settings))
	copy(sorted, settings)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Service < sorted[j].Service })

	out := map[resource.Type][]types.Resource{
		resource.ClusterType:  nil,
		resource.EndpointType: nil,
		resource.ListenerType: nil,
		resource.RouteType:    nil,
	}
	var errs []error
	for _, cs := range sorted {
		cla, err := loadAssignment(cs.Service, snaps[cs.Service])
		if err != nil {
			errs = append(errs, err)
		}
		out[resource.ClusterType] = append(out[resource.ClusterType], Cluster(cs))
		out[resource.EndpointType] = append(out[resource.EndpointType], cla)
		out[resource.ListenerType] = append(out[resource.ListenerType], apiListener(cs.Service))
		out[resource.RouteType] = append(out[resource.RouteType], routeConfig(cs.Service))
	}
	return out, errors.Join(errs...)
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		// anypb.New fails only when m cannot be marshalled, which for the
		// generated messages built here means a programming error.
		panic(fmt.Sprintf("xds: marshal %T: %v", m, err))
	}
	return a
}

func policy(name string, m proto.Message) *clusterv3.LoadBalancingPolicy_Policy {
	return &clusterv3.LoadBalancingPolicy_Policy{
		TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: name, TypedConfig: mustAny(m)},
	}
}

func u32(v uint32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(v) }

// Cluster translates one service's settings into an EDS Cluster.
//
// lb_policy carries the policy wherever the enum has a value every client
// understands. weighted_random and maglev are not understood by gRPC
// (which NACKs RANDOM and MAGLEV), so for them load_balancing_policy lists
// the Envoy policy first and a gRPC-compatible fallback second
// (random→round_robin, maglev→ring_hash), and lb_policy names the
// fallback: Envoy uses the first policy it supports, and so does gRPC.
func Cluster(cs ClusterSettings) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 cs.Service,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: cs.Service},
	}
	if cs.ConnectTimeout > 0 {
		c.ConnectTimeout = durationpb.New(cs.ConnectTimeout)
	}
	ring := &clusterv3.Cluster_RingHashLbConfig{HashFunction: clusterv3.Cluster_RingHashLbConfig_XX_HASH}
	if cs.RingMinSize > 0 {
		ring.MinimumRingSize = wrapperspb.UInt64(cs.RingMinSize)
	}
	if cs.RingMaxSize > 0 {
		ring.MaximumRingSize = wrapperspb.UInt64(cs.RingMaxSize)
	}
	switch cs.LBPolicy {
	case "", RoundRobin:
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	case WeightedRandom:
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
		c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
			policy(policyRandom, &randomv3.Random{}),
			policy(policyRoundRobin, &roundrobinv3.RoundRobin{}),
		}}
	case LeastRequest:
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
		lr := &clusterv3.Cluster_LeastRequestLbConfig{}
		if cs.LeastRequestChoiceCount > 0 {
			lr.ChoiceCount = u32(cs.LeastRequestChoiceCount)
		}
		if cs.ActiveRequestBias != nil {
			lr.ActiveRequestBias = &corev3.RuntimeDouble{
				DefaultValue: *cs.ActiveRequestBias,
				RuntimeKey:   "upstream." + cs.Service + ".active_request_bias",
			}
		}
		c.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: lr}
	case RingHash:
		c.LbPolicy = clusterv3.Cluster_RING_HASH
		c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: ring}
	case Maglev:
		c.LbPolicy = clusterv3.Cluster_RING_HASH
		c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: ring}
		mg := &maglevv3.Maglev{}
		if cs.MaglevTableSize > 0 {
			mg.TableSize = wrapperspb.UInt64(cs.MaglevTableSize)
		}
		c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
			policy(policyMaglev, mg),
			policy(policyRingHash, &ringhashv3.RingHash{
				HashFunction:    ringhashv3.RingHash_XX_HASH,
				MinimumRingSize: ring.MinimumRingSize,
				MaximumRingSize: ring.MaximumRingSize,
			}),
		}}
	}
	if cs.HealthyPanicThreshold != nil {
		c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{
			HealthyPanicThreshold: &typev3.Percent{Value: *cs.HealthyPanicThreshold},
		}
	}
	if o := cs.Outlier; o != nil {
		c.OutlierDetection = outlierDetection(o)
	}
	if b := cs.Breakers; b != nil {
		th := &clusterv3.CircuitBreakers_Thresholds{
			Priority:           corev3.RoutingPriority_DEFAULT,
			MaxConnections:     u32(b.MaxConnections),
			MaxPendingRequests: u32(b.MaxPendingRequests),
			MaxRequests:        u32(b.MaxRequests),
			MaxRetries:         u32(b.MaxRetries),
		}
		if rb := b.RetryBudget; rb != nil {
			th.RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
				BudgetPercent:       &typev3.Percent{Value: rb.BudgetPercent},
				MinRetryConcurrency: u32(rb.MinRetryConcurrency),
			}
		}
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{th}}
	}
	if h := cs.HealthCheck; h != nil {
		c.HealthChecks = []*corev3.HealthCheck{healthCheck(h)}
	}
	return c
}

func outlierDetection(o *OutlierSettings) *clusterv3.OutlierDetection {
	od := &clusterv3.OutlierDetection{
		Consecutive_5Xx:                        u32(o.Consecutive5xx),
		ConsecutiveGatewayFailure:              u32(o.ConsecutiveGatewayFailure),
		ConsecutiveLocalOriginFailure:          u32(o.ConsecutiveLocalOriginFailure),
		MaxEjectionPercent:                     u32(o.MaxEjectionPercent),
		EnforcingConsecutive_5Xx:               u32(o.EnforcingConsecutive5xx),
		EnforcingConsecutiveGatewayFailure:     u32(o.EnforcingConsecutiveGatewayFailure),
		EnforcingConsecutiveLocalOriginFailure: u32(o.EnforcingConsecutiveLocalOriginFailure),
		EnforcingSuccessRate:                   u32(o.EnforcingSuccessRate),
		SuccessRateMinimumHosts:                u32(o.SuccessRateMinimumHosts),
		SuccessRateRequestVolume:               u32(o.SuccessRateRequestVolume),
		SuccessRateStdevFactor:                 u32(o.SuccessRateStdevFactor),
		EnforcingFailurePercentage:             u32(o.EnforcingFailurePercentage),
		FailurePercentageThreshold:             u32(o.FailurePercentageThreshold),
		FailurePercentageMinimumHosts:          u32(o.FailurePercentageMinimumHosts),
		FailurePercentageRequestVolume:         u32(o.FailurePercentageRequestVolume),
		SplitExternalLocalOriginErrors:         o.SplitExternalLocalOriginErrors,
		SuccessfulActiveHealthCheckUnejectHost: wrapperspb.Bool(o.SuccessfulActiveHealthCheckUnejectHost),
		AlwaysEjectOneHost:                     wrapperspb.Bool(o.AlwaysEjectOneHost),
	}
	if o.Interval > 0 {
		od.Interval = durationpb.New(o.Interval)
	}
	if o.BaseEjectionTime > 0 {
		od.BaseEjectionTime = durationpb.New(o.BaseEjectionTime)
	}
	if o.MaxEjectionTime > 0 {
		od.MaxEjectionTime = durationpb.New(o.MaxEjectionTime)
	}
	return od
}

func healthCheck(h *HealthCheckSettings) *corev3.HealthCheck {
	interval, timeout := h.Interval, h.Timeout
	if interval == 0 {
		interval = DefaultHealthCheckInterval
	}
	if timeout == 0 {
		timeout = DefaultHealthCheckTimeout
	}
	unhealthy, healthy := h.UnhealthyThreshold, h.HealthyThreshold
	if unhealthy == 0 {
		unhealthy = DefaultUnhealthyThreshold
	}
	if healthy == 0 {
		healthy = DefaultHealthyThreshold
	}
	hc := &corev3.HealthCheck{
		Interval:           durationpb.New(interval),
		Timeout:            durationpb.New(timeout),
		UnhealthyThreshold: u32(unhealthy),
		HealthyThreshold:   u32(healthy),
	}
	if h.NoTrafficInterval > 0 {
		hc.NoTrafficInterval = durationpb.New(h.NoTrafficInterval)
	}
	switch {
	case h.HTTPPath != "":
		hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: h.HTTPPath}}
	case h.GRPC:
		hc.HealthChecker = &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{ServiceName: h.GRPCServiceName}}
	default:
		hc.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{}}
	}
	return hc
}

// healthStatus maps discovery health to Envoy's.
func healthStatus(h discovery.Health) corev3.HealthStatus {
	switch h {
	case discovery.Healthy:
		return corev3.HealthStatus_HEALTHY
	case discovery.Degraded:
		return corev3.HealthStatus_DEGRADED
	case discovery.Unhealthy:
		return corev3.HealthStatus_UNHEALTHY
	case discovery.Draining:
		return corev3.HealthStatus_DRAINING
	}
	return corev3.HealthStatus_UNKNOWN
}

// splitAddress parses "IP:port" into what a SocketAddress needs.
func splitAddress(addr string) (string, uint32, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	if net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("host %q is not an IP address (EDS carries IPs)", host)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return "", 0, fmt.Errorf("port %q is not in 1..65535", port)
	}
	return host, uint32(p), nil
}

// loadAssignment translates one snapshot (nil: no endpoints yet).
func loadAssignment(service string, snap *discovery.Snapshot) (*endpointv3.ClusterLoadAssignment, error) {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: service}
	if snap == nil || len(snap.Endpoints) == 0 {
		return cla, nil
	}
	var errs []error
	lbs := make([]*endpointv3.LbEndpoint, 0, len(snap.Endpoints))
	for _, ep := range snap.Endpoints {
		host, port, err := splitAddress(ep.Address)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: service %q endpoint %s left out: %v", ErrTranslate, service, ep.Address, err))
			continue
		}
		lb := &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       host,
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
				}}},
			}},
			HealthStatus:        healthStatus(ep.Health),
			LoadBalancingWeight: u32(ep.Weight),
		}
		if len(ep.Meta) > 0 {
			fields := make(map[string]any, len(ep.Meta))
			for k, v := range ep.Meta {
				fields[k] = v
			}
			st, err := structpb.NewStruct(fields)
			if err == nil {
				lb.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{metaNamespace: st}}
			}
		}
		lbs = append(lbs, lb)
	}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{
			Locality:            &corev3.Locality{},
			LbEndpoints:         lbs,
			LoadBalancingWeight: u32(1),
		}}
	}
	return cla, errors.Join(errs...)
}

// apiListener is the Listener a proxyless gRPC client resolves for
// xds:///SERVICE.
func apiListener(service string) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: service,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: service,
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       routerFilterName,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
		}},
	}
	return &listenerv3.Listener{
		Name:        service,
		ApiListener: &listenerv3.ApiListener{ApiListener: mustAny(hcm)},
	}
}

// routeConfig routes every request for domain SERVICE to cluster SERVICE.
func routeConfig(service string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: service,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    service,
			Domains: []string{service},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: service},
				}},
			}},
		}},
	}
}

// routeNames returns the RDS names an API listener refers to.
func routeNames(l *listenerv3.Listener) []string {
	api := l.GetApiListener().GetApiListener()
	if api == nil {
		return nil
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := api.UnmarshalTo(hcm); err != nil {
		return nil
	}
	if name := hcm.GetRds().GetRouteConfigName(); name != "" {
		return []string{name}
	}
	return nil
}
