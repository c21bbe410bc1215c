package xds

import (
	"errors"
	"fmt"
	"math"
	"net"
	"sort"
	"strconv"
	"time"

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
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/health"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
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

// Resources translates upstreams and endpoint snapshots into xDS
// resources, one set per upstream:
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
func Resources(upstreams []Upstream, snaps map[string]*discovery.Snapshot) (map[resource.Type][]types.Resource, error) {
	sorted := make([]Upstream, len(upstreams))
	copy(sorted, upstreams)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Service < sorted[j].Service })

	out := map[resource.Type][]types.Resource{
		resource.ClusterType:  nil,
		resource.EndpointType: nil,
		resource.ListenerType: nil,
		resource.RouteType:    nil,
	}
	var errs []error
	for _, u := range sorted {
		cla, err := loadAssignment(u.Service, snaps[u.Service])
		if err != nil {
			errs = append(errs, err)
		}
		out[resource.ClusterType] = append(out[resource.ClusterType], Cluster(u))
		out[resource.EndpointType] = append(out[resource.EndpointType], cla)
		out[resource.ListenerType] = append(out[resource.ListenerType], apiListener(u.Service))
		out[resource.RouteType] = append(out[resource.RouteType], routeConfig(u.Service))
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

// u32p is u32 for an optional value (nil stays nil: Envoy's default).
func u32p(v *uint32) *wrapperspb.UInt32Value {
	if v == nil {
		return nil
	}
	return wrapperspb.UInt32(*v)
}

func boolp(v *bool) *wrapperspb.BoolValue {
	if v == nil {
		return nil
	}
	return wrapperspb.Bool(*v)
}

// dur is a duration field; zero is left out (Envoy's default).
func dur(d time.Duration) *durationpb.Duration {
	if d <= 0 {
		return nil
	}
	return durationpb.New(d)
}

// lbTranslators set a Cluster's load-balancing fields, one per lb_policy
// served over CDS (a new balancer policy adds its entry here).
//
// lb_policy carries the policy wherever the enum has a value every client
// understands. weighted_random and maglev are not understood by gRPC
// (which NACKs RANDOM and MAGLEV), so for them load_balancing_policy lists
// the Envoy policy first and a gRPC-compatible fallback second
// (random→round_robin, maglev→ring_hash), and lb_policy names the
// fallback: Envoy uses the first policy it supports, and so does gRPC.
var lbTranslators = map[string]func(c *clusterv3.Cluster, service string, lb balancer.Config){
	"": func(c *clusterv3.Cluster, _ string, _ balancer.Config) { c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN },
	balancer.RoundRobin: func(c *clusterv3.Cluster, _ string, _ balancer.Config) {
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	},
	balancer.WeightedRandom: func(c *clusterv3.Cluster, _ string, _ balancer.Config) {
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
		c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
			policy(policyRandom, &randomv3.Random{}),
			policy(policyRoundRobin, &roundrobinv3.RoundRobin{}),
		}}
	},
	balancer.LeastRequest: func(c *clusterv3.Cluster, service string, lb balancer.Config) {
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
		lr := &clusterv3.Cluster_LeastRequestLbConfig{}
		if n := lb.LeastRequest.ChoiceCount; n > 0 {
			lr.ChoiceCount = u32(n)
		}
		if b := lb.LeastRequest.ActiveRequestBias; b != nil {
			lr.ActiveRequestBias = &corev3.RuntimeDouble{
				DefaultValue: *b,
				RuntimeKey:   "upstream." + service + ".active_request_bias",
			}
		}
		c.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: lr}
	},
	balancer.RingHash: func(c *clusterv3.Cluster, _ string, lb balancer.Config) {
		c.LbPolicy = clusterv3.Cluster_RING_HASH
		c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: ringConfig(lb.RingHash)}
	},
	balancer.Maglev: func(c *clusterv3.Cluster, _ string, lb balancer.Config) {
		ring := ringConfig(lb.RingHash)
		c.LbPolicy = clusterv3.Cluster_RING_HASH
		c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: ring}
		mg := &maglevv3.Maglev{}
		if n := lb.Maglev.TableSize; n > 0 {
			mg.TableSize = wrapperspb.UInt64(n)
		}
		c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
			policy(policyMaglev, mg),
			policy(policyRingHash, &ringhashv3.RingHash{
				HashFunction:    ringhashv3.RingHash_XX_HASH,
				MinimumRingSize: ring.MinimumRingSize,
				MaximumRingSize: ring.MaximumRingSize,
			}),
		}}
	},
}

func ringConfig(rh balancer.RingHashConfig) *clusterv3.Cluster_RingHashLbConfig {
	ring := &clusterv3.Cluster_RingHashLbConfig{HashFunction: clusterv3.Cluster_RingHashLbConfig_XX_HASH}
	if rh.MinimumRingSize > 0 {
		ring.MinimumRingSize = wrapperspb.UInt64(rh.MinimumRingSize)
	}
	if rh.MaximumRingSize > 0 {
		ring.MaximumRingSize = wrapperspb.UInt64(rh.MaximumRingSize)
	}
	return ring
}

// Cluster translates one upstream into an EDS Cluster. What the settings
// leave out (zero values, nil pointers) is left out of the Cluster. The
// upstream must have passed Validate (an lb_policy without a translator
// is served as round_robin).
func Cluster(u Upstream) *clusterv3.Cluster {
	s := &u.Settings
	c := &clusterv3.Cluster{
		Name:                 u.Service,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: u.Service},
		ConnectTimeout:       dur(s.ConnectTimeout),
	}
	tr, ok := lbTranslators[s.LBPolicy]
	if !ok {
		tr = lbTranslators[""]
	}
	tr(c, u.Service, s.LB)
	if p := s.HealthyPanicThreshold; p != nil {
		c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{
			HealthyPanicThreshold: &typev3.Percent{Value: *p},
		}
	}
	if s.ZoneAware {
		if c.CommonLbConfig == nil {
			c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{}
		}
		za := &clusterv3.Cluster_CommonLbConfig_ZoneAwareLbConfig{RoutingEnabled: &typev3.Percent{Value: 100}}
		if n := s.ZoneAwareMinClusterSize; n != nil {
			za.MinClusterSize = wrapperspb.UInt64(uint64(*n))
		}
		c.CommonLbConfig.LocalityConfigSpecifier = &clusterv3.Cluster_CommonLbConfig_ZoneAwareLbConfig_{ZoneAwareLbConfig: za}
	}
	if o := s.OutlierDetection; o != nil {
		c.OutlierDetection = outlierDetection(o)
	}
	if b := s.CircuitBreakers; b != nil {
		th := &clusterv3.CircuitBreakers_Thresholds{
			Priority:           corev3.RoutingPriority_DEFAULT,
			MaxConnections:     u32p(b.MaxConnections),
			MaxPendingRequests: u32p(b.MaxPendingRequests),
			MaxRequests:        u32p(b.MaxRequests),
			MaxRetries:         u32p(b.MaxRetries),
		}
		if rb := b.RetryBudget; rb != nil {
			th.RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
				MinRetryConcurrency: u32p(rb.MinRetryConcurrency),
			}
			if p := rb.BudgetPercent; p != nil {
				th.RetryBudget.BudgetPercent = &typev3.Percent{Value: *p}
			}
		}
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{th}}
	}
	if h := s.HealthCheck; h != nil {
		c.HealthChecks = []*corev3.HealthCheck{healthCheck(h)}
	}
	return c
}

func outlierDetection(o *outlier.Config) *clusterv3.OutlierDetection {
	return &clusterv3.OutlierDetection{
		Consecutive_5Xx:                        u32p(o.Consecutive5xx),
		ConsecutiveGatewayFailure:              u32p(o.ConsecutiveGatewayFailure),
		ConsecutiveLocalOriginFailure:          u32p(o.ConsecutiveLocalOriginFailure),
		MaxEjectionPercent:                     u32p(o.MaxEjectionPercent),
		EnforcingConsecutive_5Xx:               u32p(o.EnforcingConsecutive5xx),
		EnforcingConsecutiveGatewayFailure:     u32p(o.EnforcingConsecutiveGatewayFailure),
		EnforcingConsecutiveLocalOriginFailure: u32p(o.EnforcingConsecutiveLocalOriginFailure),
		EnforcingSuccessRate:                   u32p(o.EnforcingSuccessRate),
		SuccessRateMinimumHosts:                u32p(o.SuccessRateMinimumHosts),
		SuccessRateRequestVolume:               u32p(o.SuccessRateRequestVolume),
		SuccessRateStdevFactor:                 u32p(o.SuccessRateStdevFactor),
		EnforcingFailurePercentage:             u32p(o.EnforcingFailurePercentage),
		FailurePercentageThreshold:             u32p(o.FailurePercentageThreshold),
		FailurePercentageMinimumHosts:          u32p(o.FailurePercentageMinimumHosts),
		FailurePercentageRequestVolume:         u32p(o.FailurePercentageRequestVolume),
		EnforcingLocalOriginSuccessRate:        u32p(o.EnforcingLocalOriginSuccessRate),
		EnforcingFailurePercentageLocalOrigin:  u32p(o.EnforcingFailurePercentageLocalOrigin),
		SplitExternalLocalOriginErrors:         o.SplitExternalLocalOriginErrors,
		SuccessfulActiveHealthCheckUnejectHost: boolp(o.SuccessfulActiveHealthCheckUnejectHost),
		AlwaysEjectOneHost:                     boolp(o.AlwaysEjectOneHost),
		Interval:                               dur(o.Interval),
		BaseEjectionTime:                       dur(o.BaseEjectionTime),
		MaxEjectionTime:                        dur(o.MaxEjectionTime),
		MaxEjectionTimeJitter:                  dur(o.MaxEjectionTimeJitter),
	}
}

// healthCheck translates one health check. Envoy requires interval,
// timeout and both thresholds; where the config leaves them out, ours
// (health.Default*) are sent.
func healthCheck(h *health.Config) *corev3.HealthCheck {
	d := *h
	d.SetDefaults()
	hc := &corev3.HealthCheck{
		Interval:              durationpb.New(d.Interval),
		Timeout:               durationpb.New(d.Timeout),
		UnhealthyThreshold:    u32(uint32(d.UnhealthyThreshold)),
		HealthyThreshold:      u32(uint32(d.HealthyThreshold)),
		NoTrafficInterval:     dur(h.NoTrafficInterval),
		IntervalJitter:        dur(h.IntervalJitter),
		IntervalJitterPercent: uint32(max(h.IntervalJitterPercent, 0)),
		InitialJitter:         dur(h.InitialJitter),
	}
	switch {
	case h.HTTP != nil:
		hh := &corev3.HealthCheck_HttpHealthCheck{Path: h.HTTP.Path, Host: h.HTTP.Host,
			ExpectedStatuses: int64Ranges(h.HTTP.ExpectedStatuses), RetriableStatuses: int64Ranges(h.HTTP.RetriableStatuses)}
		hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: hh}
	case h.GRPC != nil:
		hc.HealthChecker = &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{
			ServiceName: h.GRPC.ServiceName, Authority: h.GRPC.Authority}}
	default:
		tcp := &corev3.HealthCheck_TcpHealthCheck{}
		if t := h.TCP; t != nil {
			if t.Send != "" {
				tcp.Send = &corev3.HealthCheck_Payload{Payload: &corev3.HealthCheck_Payload_Binary{Binary: []byte(t.Send)}}
			}
			if t.Expect != "" {
				tcp.Receive = []*corev3.HealthCheck_Payload{{Payload: &corev3.HealthCheck_Payload_Binary{Binary: []byte(t.Expect)}}}
			}
		}
		hc.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: tcp}
	}
	return hc
}

func int64Ranges(rs []health.StatusRange) []*typev3.Int64Range {
	if len(rs) == 0 {
		return nil
	}
	out := make([]*typev3.Int64Range, len(rs))
	for i, r := range rs {
		out[i] = &typev3.Int64Range{Start: int64(r.Start), End: int64(r.End)}
	}
	return out
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
	// One LocalityLbEndpoints per priority, region and zone. Priorities
	// are renumbered densely from 0 (a level with no endpoints takes no
	// load anyway, and grpc-go refuses gaps). A locality's weight is the
	// sum of its endpoints' weights, so locality-weighted balancing gives
	// every endpoint the share its weight says.
	type locKey struct {
		prio         uint32
		region, zone string
	}
	byLoc := map[locKey]*endpointv3.LocalityLbEndpoints{}
	sums := map[locKey]uint64{}
	var keys []locKey
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
		if len(ep.Meta) > 0 || ep.MTLS {
			fields := make(map[string]any, len(ep.Meta)+1)
			for k, v := range ep.Meta {
				fields[k] = v
			}
			if ep.MTLS {
				fields[discovery.MetaMTLS] = "true" // the mesh-instance mark travels as metadata
			}
			st, err := structpb.NewStruct(fields)
			if err == nil {
				lb.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{metaNamespace: st}}
			}
		}
		k := locKey{ep.Priority, ep.Region, ep.Zone}
		loc := byLoc[k]
		if loc == nil {
			loc = &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Region: ep.Region, Zone: ep.Zone}}
			byLoc[k] = loc
			keys = append(keys, k)
		}
		loc.LbEndpoints = append(loc.LbEndpoints, lb)
		sums[k] += uint64(ep.Weight)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.prio != b.prio {
			return a.prio < b.prio
		}
		if a.region != b.region {
			return a.region < b.region
		}
		return a.zone < b.zone
	})
	dense := uint32(0)
	for i, k := range keys {
		if i > 0 && k.prio != keys[i-1].prio {
			dense++
		}
		loc := byLoc[k]
		loc.Priority = dense
		loc.LoadBalancingWeight = u32(uint32(min(sums[k], math.MaxUint32)))
		cla.Endpoints = append(cla.Endpoints, loc)
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
