package xds

import (
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	maglevv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/maglev/v3"
	randomv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/random/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/health"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
	"github.com/sidemesh/sidemesh/upstream"
)

// DecodedCluster is what the client takes from a Cluster: the upstream
// (name and settings) and the name of the ClusterLoadAssignment that
// carries its endpoints.
type DecodedCluster struct {
	Upstream
	// EDSName is eds_cluster_config.service_name, or the cluster name.
	EDSName string
}

// DecodeCluster validates a Cluster received over CDS and translates it
// back into upstream settings, the inverse of Cluster. Only what a Cluster
// can carry is filled: lb_policy and its options, connect_timeout,
// healthy_panic_threshold, outlier_detection, circuit_breakers and
// health_check. What the Cluster leaves out of the first four gets Envoy's
// default; outlier detection, circuit breakers and health checks stay nil
// when absent (the Cluster said nothing about them), and their fields the
// Cluster leaves out get Envoy's defaults (always_eject_one_host: false).
// Errors wrap ErrInvalidResource and name the cluster and what is wrong.
func DecodeCluster(c *clusterv3.Cluster) (DecodedCluster, error) {
	name := c.GetName()
	bad := func(format string, args ...any) (DecodedCluster, error) {
		return DecodedCluster{}, fmt.Errorf("%w: Cluster %q: %s", ErrInvalidResource, name, fmt.Sprintf(format, args...))
	}
	if name == "" {
		return bad("name is empty")
	}
	if t := c.GetType(); t != clusterv3.Cluster_EDS {
		return bad("discovery type %s is not supported (want EDS)", t)
	}
	src := c.GetEdsClusterConfig().GetEdsConfig()
	if src.GetAds() == nil && src.GetSelf() == nil {
		return bad("eds_cluster_config.eds_config must be ads or self (we speak ADS only)")
	}
	if err := c.ValidateAll(); err != nil {
		return bad("%v", err)
	}
	d := DecodedCluster{Upstream: Upstream{Service: name}, EDSName: name}
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		d.EDSName = n
	}
	s := &d.Settings
	s.ConnectTimeout = upstream.DefaultConnectTimeout
	if ct := c.GetConnectTimeout(); ct != nil {
		s.ConnectTimeout = ct.AsDuration()
	}
	if lr := c.GetLeastRequestLbConfig(); lr != nil {
		if v := lr.GetChoiceCount(); v != nil {
			s.LB.LeastRequest.ChoiceCount = v.GetValue()
		}
		if b := lr.GetActiveRequestBias(); b != nil {
			s.LB.LeastRequest.ActiveRequestBias = new(b.GetDefaultValue())
		}
	}
	if rh := c.GetRingHashLbConfig(); rh != nil {
		if rh.GetHashFunction() != clusterv3.Cluster_RingHashLbConfig_XX_HASH {
			return bad("ring_hash_lb_config.hash_function %s is not supported (want XX_HASH)", rh.GetHashFunction())
		}
		if v := rh.GetMinimumRingSize(); v != nil {
			s.LB.RingHash.MinimumRingSize = v.GetValue()
		}
		if v := rh.GetMaximumRingSize(); v != nil {
			s.LB.RingHash.MaximumRingSize = v.GetValue()
		}
	}
	if v := c.GetMaglevLbConfig().GetTableSize(); v != nil {
		s.LB.Maglev.TableSize = v.GetValue()
	}
	if lbp := c.GetLoadBalancingPolicy(); lbp != nil {
		// Envoy's rule: the first policy the client supports wins.
		found := false
		for _, p := range lbp.GetPolicies() {
			ok, err := decodePolicy(s, p.GetTypedExtensionConfig().GetTypedConfig())
			if err != nil {
				return bad("load_balancing_policy %s: %v", p.GetTypedExtensionConfig().GetName(), err)
			}
			if ok {
				found = true
				break
			}
		}
		if !found {
			return bad("load_balancing_policy lists no policy we support (random, round_robin, least_request, ring_hash, maglev)")
		}
	} else {
		p, ok := lbPolicyNames[c.GetLbPolicy()]
		if !ok {
			return bad("lb_policy %s is not supported", c.GetLbPolicy())
		}
		s.LBPolicy = p
	}
	if s.LBPolicy == balancer.LeastRequest && s.LB.LeastRequest.ChoiceCount == 1 {
		return bad("least_request choice_count %d must be >= 2", s.LB.LeastRequest.ChoiceCount)
	}
	s.LB.SetDefaults()
	if lo, hi := s.LB.RingHash.MinimumRingSize, s.LB.RingHash.MaximumRingSize; lo > hi {
		return bad("minimum_ring_size %d is larger than maximum_ring_size %d", lo, hi)
	}
	s.HealthyPanicThreshold = new(float64(upstream.DefaultPanicThreshold))
	if p := c.GetCommonLbConfig().GetHealthyPanicThreshold(); p != nil {
		s.HealthyPanicThreshold = new(p.GetValue())
	}
	if za := c.GetCommonLbConfig().GetZoneAwareLbConfig(); za != nil {
		// routing_enabled is a runtime percentage in Envoy; any share turns
		// zone-aware routing on here.
		s.ZoneAware = za.GetRoutingEnabled() == nil || za.GetRoutingEnabled().GetValue() > 0
		if m := za.GetMinClusterSize(); m != nil {
			s.ZoneAwareMinClusterSize = new(int(min(m.GetValue(), math.MaxInt32)))
		}
	}
	if od := c.GetOutlierDetection(); od != nil {
		s.OutlierDetection = decodeOutlier(od)
	}
	for _, th := range c.GetCircuitBreakers().GetThresholds() {
		if th.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		b := &breaker.Config{
			MaxConnections:     u32v(th.GetMaxConnections()),
			MaxPendingRequests: u32v(th.GetMaxPendingRequests()),
			MaxRequests:        u32v(th.GetMaxRequests()),
			MaxRetries:         u32v(th.GetMaxRetries()),
		}
		if rb := th.GetRetryBudget(); rb != nil {
			b.RetryBudget = &breaker.RetryBudgetConfig{MinRetryConcurrency: u32v(rb.GetMinRetryConcurrency())}
			if p := rb.GetBudgetPercent(); p != nil {
				b.RetryBudget.BudgetPercent = new(p.GetValue())
			}
		}
		b.SetDefaults()
		s.CircuitBreakers = b
	}
	if hcs := c.GetHealthChecks(); len(hcs) > 0 {
		// We run one active health check per cluster: the first.
		h, err := decodeHealthCheck(hcs[0])
		if err != nil {
			return bad("health_checks[0]: %v", err)
		}
		s.HealthCheck = h
	}
	if err := d.Validate("cluster"); err != nil {
		return bad("%v", err)
	}
	return d, nil
}

// lbPolicyNames maps Cluster.lb_policy to our policy names.
var lbPolicyNames = map[clusterv3.Cluster_LbPolicy]string{
	clusterv3.Cluster_ROUND_ROBIN:   balancer.RoundRobin,
	clusterv3.Cluster_LEAST_REQUEST: balancer.LeastRequest,
	clusterv3.Cluster_RING_HASH:     balancer.RingHash,
	clusterv3.Cluster_RANDOM:        balancer.WeightedRandom,
	clusterv3.Cluster_MAGLEV:        balancer.Maglev,
}

// u32v is a wrapper's value, or nil when the field is absent.
func u32v(v *wrapperspb.UInt32Value) *uint32 {
	if v == nil {
		return nil
	}
	return new(v.GetValue())
}

// decodePolicy applies one load_balancing_policy entry; ok is false when
// the policy is not one we run.
func decodePolicy(s *upstream.Settings, cfg *anypb.Any) (ok bool, err error) {
	if cfg == nil {
		return false, nil
	}
	switch {
	case cfg.MessageIs(&randomv3.Random{}):
		s.LBPolicy = balancer.WeightedRandom
	case cfg.MessageIs(&roundrobinv3.RoundRobin{}):
		s.LBPolicy = balancer.RoundRobin
	case cfg.MessageIs(&lrv3.LeastRequest{}):
		m := &lrv3.LeastRequest{}
		if err := cfg.UnmarshalTo(m); err != nil {
			return false, err
		}
		s.LBPolicy = balancer.LeastRequest
		if v := m.GetChoiceCount(); v != nil {
			s.LB.LeastRequest.ChoiceCount = v.GetValue()
		}
		if b := m.GetActiveRequestBias(); b != nil {
			s.LB.LeastRequest.ActiveRequestBias = new(b.GetDefaultValue())
		}
	case cfg.MessageIs(&ringhashv3.RingHash{}):
		m := &ringhashv3.RingHash{}
		if err := cfg.UnmarshalTo(m); err != nil {
			return false, err
		}
		if f := m.GetHashFunction(); f != ringhashv3.RingHash_XX_HASH && f != ringhashv3.RingHash_DEFAULT_HASH {
			return false, fmt.Errorf("hash_function %s is not supported (want XX_HASH)", f)
		}
		s.LBPolicy = balancer.RingHash
		if v := m.GetMinimumRingSize(); v != nil {
			s.LB.RingHash.MinimumRingSize = v.GetValue()
		}
		if v := m.GetMaximumRingSize(); v != nil {
			s.LB.RingHash.MaximumRingSize = v.GetValue()
		}
	case cfg.MessageIs(&maglevv3.Maglev{}):
		m := &maglevv3.Maglev{}
		if err := cfg.UnmarshalTo(m); err != nil {
			return false, err
		}
		s.LBPolicy = balancer.Maglev
		if v := m.GetTableSize(); v != nil {
			s.LB.Maglev.TableSize = v.GetValue()
		}
	default:
		return false, nil
	}
	return true, nil
}

func decodeOutlier(od *clusterv3.OutlierDetection) *outlier.Config {
	o := &outlier.Config{
		Consecutive5xx:                         u32v(od.GetConsecutive_5Xx()),
		ConsecutiveGatewayFailure:              u32v(od.GetConsecutiveGatewayFailure()),
		ConsecutiveLocalOriginFailure:          u32v(od.GetConsecutiveLocalOriginFailure()),
		MaxEjectionPercent:                     u32v(od.GetMaxEjectionPercent()),
		EnforcingConsecutive5xx:                u32v(od.GetEnforcingConsecutive_5Xx()),
		EnforcingConsecutiveGatewayFailure:     u32v(od.GetEnforcingConsecutiveGatewayFailure()),
		EnforcingConsecutiveLocalOriginFailure: u32v(od.GetEnforcingConsecutiveLocalOriginFailure()),
		EnforcingSuccessRate:                   u32v(od.GetEnforcingSuccessRate()),
		SuccessRateMinimumHosts:                u32v(od.GetSuccessRateMinimumHosts()),
		SuccessRateRequestVolume:               u32v(od.GetSuccessRateRequestVolume()),
		SuccessRateStdevFactor:                 u32v(od.GetSuccessRateStdevFactor()),
		EnforcingFailurePercentage:             u32v(od.GetEnforcingFailurePercentage()),
		FailurePercentageThreshold:             u32v(od.GetFailurePercentageThreshold()),
		FailurePercentageMinimumHosts:          u32v(od.GetFailurePercentageMinimumHosts()),
		FailurePercentageRequestVolume:         u32v(od.GetFailurePercentageRequestVolume()),
		EnforcingLocalOriginSuccessRate:        u32v(od.GetEnforcingLocalOriginSuccessRate()),
		EnforcingFailurePercentageLocalOrigin:  u32v(od.GetEnforcingFailurePercentageLocalOrigin()),
		SplitExternalLocalOriginErrors:         od.GetSplitExternalLocalOriginErrors(),
		// Absent means Envoy's default (false), not ours.
		AlwaysEjectOneHost: new(od.GetAlwaysEjectOneHost().GetValue()),
		Interval:           od.GetInterval().AsDuration(),
		BaseEjectionTime:   od.GetBaseEjectionTime().AsDuration(),
		MaxEjectionTime:    od.GetMaxEjectionTime().AsDuration(),
	}
	if v := od.GetSuccessfulActiveHealthCheckUnejectHost(); v != nil {
		o.SuccessfulActiveHealthCheckUnejectHost = new(v.GetValue())
	}
	if d := od.GetMaxEjectionTimeJitter(); d != nil {
		o.MaxEjectionTimeJitter = d.AsDuration()
	}
	o.SetDefaults()
	return o
}

func decodeHealthCheck(hc *corev3.HealthCheck) (*health.Config, error) {
	h := &health.Config{
		Interval:              hc.GetInterval().AsDuration(),
		Timeout:               hc.GetTimeout().AsDuration(),
		UnhealthyThreshold:    int(hc.GetUnhealthyThreshold().GetValue()),
		HealthyThreshold:      int(hc.GetHealthyThreshold().GetValue()),
		IntervalJitter:        hc.GetIntervalJitter().AsDuration(),
		IntervalJitterPercent: int(hc.GetIntervalJitterPercent()),
		InitialJitter:         hc.GetInitialJitter().AsDuration(),
	}
	if d := hc.GetNoTrafficInterval(); d != nil {
		h.NoTrafficInterval = d.AsDuration()
	}
	switch {
	case hc.GetHttpHealthCheck() != nil:
		hh := hc.GetHttpHealthCheck()
		h.HTTP = &health.HTTPCheck{Path: hh.GetPath(), Host: hh.GetHost(),
			ExpectedStatuses: statusRanges(hh.GetExpectedStatuses()), RetriableStatuses: statusRanges(hh.GetRetriableStatuses())}
	case hc.GetTcpHealthCheck() != nil:
		t := hc.GetTcpHealthCheck()
		h.TCP = &health.TCPCheck{}
		if p := t.GetSend(); p != nil {
			b, err := payload(p)
			if err != nil {
				return nil, fmt.Errorf("tcp_health_check.send: %w", err)
			}
			h.TCP.Send = b
		}
		if rs := t.GetReceive(); len(rs) > 0 {
			var all strings.Builder
			for i, p := range rs {
				b, err := payload(p)
				if err != nil {
					return nil, fmt.Errorf("tcp_health_check.receive[%d]: %w", i, err)
				}
				all.WriteString(b)
			}
			h.TCP.Expect = all.String()
		}
	case hc.GetGrpcHealthCheck() != nil:
		g := hc.GetGrpcHealthCheck()
		h.GRPC = &health.GRPCCheck{ServiceName: g.GetServiceName(), Authority: g.GetAuthority()}
	default:
		return nil, fmt.Errorf("health checker %T is not supported (want http, tcp or grpc)", hc.GetHealthChecker())
	}
	h.SetDefaults()
	return h, nil
}

// payload is a health check payload's bytes (text is hex, as in Envoy).
func payload(p *corev3.HealthCheck_Payload) (string, error) {
	if t := p.GetText(); t != "" {
		b, err := hex.DecodeString(t)
		if err != nil {
			return "", fmt.Errorf("text %q is not hex", t)
		}
		return string(b), nil
	}
	return string(p.GetBinary()), nil
}

func statusRanges(rs []*typev3.Int64Range) []health.StatusRange {
	if len(rs) == 0 {
		return nil
	}
	out := make([]health.StatusRange, len(rs))
	for i, r := range rs {
		out[i] = health.StatusRange{Start: int(r.GetStart()), End: int(r.GetEnd())}
	}
	return out
}

// DecodeLoadAssignment validates a ClusterLoadAssignment and returns its
// endpoints, each with its locality's priority, region and zone. Locality
// weights are honoured as grpc-go's weighted_target (and Envoy's
// locality_weighted_lb_config) do: within a priority, an endpoint's weight
// becomes its share of its locality times the locality's weight
// (localityWeights); a control plane whose locality weights are the sums of
// their endpoints' weights, as ours, leaves the weights as they are. A
// missing load_balancing_weight is 1.
// Health maps HEALTHY and UNKNOWN to Healthy, DEGRADED to Degraded,
// DRAINING to Draining and everything else to Unhealthy. Errors wrap
// ErrInvalidResource, name the assignment and say what is wrong.
func DecodeLoadAssignment(cla *endpointv3.ClusterLoadAssignment) ([]discovery.Endpoint, error) {
	name := cla.GetClusterName()
	bad := func(format string, args ...any) ([]discovery.Endpoint, error) {
		return nil, fmt.Errorf("%w: ClusterLoadAssignment %q: %s", ErrInvalidResource, name, fmt.Sprintf(format, args...))
	}
	if name == "" {
		return bad("cluster_name is empty")
	}
	var eps []discovery.Endpoint
	var locOf []int // locality index of each endpoint
	seen := map[string]bool{}
	i := -1
	for li, loc := range cla.GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			i++
			ep := lb.GetEndpoint()
			if ep == nil {
				return bad("endpoint %d has no endpoint (named endpoints are not supported)", i)
			}
			sa := ep.GetAddress().GetSocketAddress()
			if sa == nil {
				return bad("endpoint %d has no socket_address", i)
			}
			port := sa.GetPortValue()
			if port == 0 || port > 65535 {
				return bad("endpoint %d (%s) has port_value %d, want 1..65535", i, sa.GetAddress(), port)
			}
			if net.ParseIP(sa.GetAddress()) == nil {
				return bad("endpoint %d has address %q, want an IP address", i, sa.GetAddress())
			}
			addr := net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(port), 10))
			weight := uint32(1)
			if w := lb.GetLoadBalancingWeight(); w != nil {
				weight = w.GetValue()
				if weight == 0 {
					return bad("endpoint %d (%s) has load_balancing_weight 0", i, addr)
				}
				if weight > discovery.MaxWeight {
					return bad("endpoint %d (%s) has load_balancing_weight %d, more than %d", i, addr, weight, discovery.MaxWeight)
				}
			}
			if seen[addr] {
				return bad("endpoint %d: duplicate address %s", i, addr)
			}
			seen[addr] = true
			d := discovery.Endpoint{Address: addr, Weight: weight, Health: decodeHealth(lb.GetHealthStatus()),
				Priority: loc.GetPriority(), Region: loc.GetLocality().GetRegion(), Zone: loc.GetLocality().GetZone()}
			if st := lb.GetMetadata().GetFilterMetadata()[metaNamespace]; st != nil {
				d.Meta = make(map[string]string, len(st.GetFields()))
				for k, v := range st.GetFields() {
					d.Meta[k] = v.GetStringValue()
				}
				d.MTLS = d.Meta[discovery.MetaMTLS] == "true"
			}
			eps = append(eps, d)
			locOf = append(locOf, li)
		}
	}
	if err := cla.ValidateAll(); err != nil {
		return bad("%v", err)
	}
	localityWeights(cla.GetEndpoints(), eps, locOf)
	return eps, nil
}

// localityWeights folds locality weights into endpoint weights, priority by
// priority: with r(L) = weight(L) / Σ endpoint weights in L, an endpoint
// of L weighs w · r(L) / max r, scaled for resolution (at most 1000 times)
// and kept in 1..discovery.MaxWeight. When every locality of a priority
// has the same r (or no weight), the weights stay as they are.
func localityWeights(locs []*endpointv3.LocalityLbEndpoints, eps []discovery.Endpoint, locOf []int) {
	sums := make([]uint64, len(locs))
	for i, ep := range eps {
		sums[locOf[i]] += uint64(ep.Weight)
	}
	ratio := func(li int) (float64, bool) {
		w := locs[li].GetLoadBalancingWeight()
		if w == nil || sums[li] == 0 {
			return 0, false
		}
		return float64(w.GetValue()) / float64(sums[li]), true
	}
	byPrio := map[uint32][]int{} // endpoint indexes
	for i, ep := range eps {
		byPrio[ep.Priority] = append(byPrio[ep.Priority], i)
	}
	for _, idx := range byPrio {
		rmax, same, first := 0.0, true, -1.0
		var maxW uint32
		for _, i := range idx {
			r, ok := ratio(locOf[i])
			if !ok {
				same = false
				r = 0
			}
			if first < 0 {
				first = r
			} else if r != first {
				same = false
			}
			rmax = math.Max(rmax, r)
			maxW = max(maxW, eps[i].Weight)
		}
		if same || rmax == 0 {
			continue
		}
		k := math.Min(1000, float64(discovery.MaxWeight)/float64(maxW))
		for _, i := range idx {
			r, _ := ratio(locOf[i])
			w := math.Round(float64(eps[i].Weight) * r / rmax * k)
			eps[i].Weight = uint32(math.Max(1, math.Min(w, discovery.MaxWeight)))
		}
	}
}

func decodeHealth(h corev3.HealthStatus) discovery.Health {
	switch h {
	case corev3.HealthStatus_HEALTHY, corev3.HealthStatus_UNKNOWN:
		return discovery.Healthy
	case corev3.HealthStatus_DEGRADED:
		return discovery.Degraded
	case corev3.HealthStatus_DRAINING:
		return discovery.Draining
	}
	return discovery.Unhealthy
}
