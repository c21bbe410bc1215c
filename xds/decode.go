package xds

import (
	"fmt"
	"net"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	maglevv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/maglev/v3"
	randomv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/random/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/discovery"
)

// DecodedCluster is what the client takes from a Cluster: the settings and
// the name of the ClusterLoadAssignment that carries its endpoints.
type DecodedCluster struct {
	Settings ClusterSettings
	// EDSName is eds_cluster_config.service_name, or the cluster name.
	EDSName string
}

// DecodeCluster validates a Cluster received over CDS and translates it
// back into ClusterSettings, the inverse of Cluster. What the Cluster
// leaves out gets Envoy's default (see Defaults), except outlier
// detection, circuit breakers and health checks, which stay nil when
// absent (the Cluster said nothing about them). Errors wrap
// ErrInvalidResource and name the cluster and what is wrong.
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
	d := DecodedCluster{Settings: Defaults(name), EDSName: name}
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		d.EDSName = n
	}
	cs := &d.Settings
	cs.Outlier, cs.Breakers = nil, nil
	if ct := c.GetConnectTimeout(); ct != nil {
		cs.ConnectTimeout = ct.AsDuration()
	}
	if lr := c.GetLeastRequestLbConfig(); lr != nil {
		if v := lr.GetChoiceCount(); v != nil {
			cs.LeastRequestChoiceCount = v.GetValue()
		}
		if b := lr.GetActiveRequestBias(); b != nil {
			v := b.GetDefaultValue()
			cs.ActiveRequestBias = &v
		}
	}
	if rh := c.GetRingHashLbConfig(); rh != nil {
		if rh.GetHashFunction() != clusterv3.Cluster_RingHashLbConfig_XX_HASH {
			return bad("ring_hash_lb_config.hash_function %s is not supported (want XX_HASH)", rh.GetHashFunction())
		}
		if v := rh.GetMinimumRingSize(); v != nil {
			cs.RingMinSize = v.GetValue()
		}
		if v := rh.GetMaximumRingSize(); v != nil {
			cs.RingMaxSize = v.GetValue()
		}
	}
	if lbp := c.GetLoadBalancingPolicy(); lbp != nil {
		// Envoy's rule: the first policy the client supports wins.
		found := false
		for _, p := range lbp.GetPolicies() {
			ok, err := decodePolicy(cs, p.GetTypedExtensionConfig().GetTypedConfig())
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
		switch p := c.GetLbPolicy(); p {
		case clusterv3.Cluster_ROUND_ROBIN:
			cs.LBPolicy = RoundRobin
		case clusterv3.Cluster_LEAST_REQUEST:
			cs.LBPolicy = LeastRequest
		case clusterv3.Cluster_RING_HASH:
			cs.LBPolicy = RingHash
		case clusterv3.Cluster_RANDOM:
			cs.LBPolicy = WeightedRandom
		case clusterv3.Cluster_MAGLEV:
			cs.LBPolicy = Maglev
			if v := c.GetMaglevLbConfig().GetTableSize(); v != nil {
				cs.MaglevTableSize = v.GetValue()
			}
		default:
			return bad("lb_policy %s is not supported", p)
		}
	}
	if cs.LBPolicy == LeastRequest && cs.LeastRequestChoiceCount < 2 {
		return bad("least_request choice_count %d must be >= 2", cs.LeastRequestChoiceCount)
	}
	if cs.RingMinSize > cs.RingMaxSize {
		return bad("minimum_ring_size %d is larger than maximum_ring_size %d", cs.RingMinSize, cs.RingMaxSize)
	}
	if p := c.GetCommonLbConfig().GetHealthyPanicThreshold(); p != nil {
		v := p.GetValue()
		cs.HealthyPanicThreshold = &v
	}
	if od := c.GetOutlierDetection(); od != nil {
		cs.Outlier = decodeOutlier(od)
	}
	for _, th := range c.GetCircuitBreakers().GetThresholds() {
		if th.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		b := DefaultBreakers()
		setU32(&b.MaxConnections, th.GetMaxConnections())
		setU32(&b.MaxPendingRequests, th.GetMaxPendingRequests())
		setU32(&b.MaxRequests, th.GetMaxRequests())
		setU32(&b.MaxRetries, th.GetMaxRetries())
		if rb := th.GetRetryBudget(); rb != nil {
			b.RetryBudget = &RetryBudget{BudgetPercent: 20, MinRetryConcurrency: 3}
			if p := rb.GetBudgetPercent(); p != nil {
				b.RetryBudget.BudgetPercent = p.GetValue()
			}
			setU32(&b.RetryBudget.MinRetryConcurrency, rb.GetMinRetryConcurrency())
		}
		cs.Breakers = b
	}
	if hcs := c.GetHealthChecks(); len(hcs) > 0 {
		// We run one active health check per cluster: the first.
		h, err := decodeHealthCheck(hcs[0])
		if err != nil {
			return bad("health_checks[0]: %v", err)
		}
		cs.HealthCheck = h
	}
	if err := cs.Validate("cluster"); err != nil {
		return bad("%v", err)
	}
	return d, nil
}

// setU32 copies a wrapper's value when the field is present.
func setU32(dst *uint32, v *wrapperspb.UInt32Value) {
	if v != nil {
		*dst = v.GetValue()
	}
}

// decodePolicy applies one load_balancing_policy entry; ok is false when
// the policy is not one we run.
func decodePolicy(cs *ClusterSettings, cfg *anypb.Any) (ok bool, err error) {
	if cfg == nil {
		return false, nil
	}
	switch {
	case cfg.MessageIs(&randomv3.Random{}):
		cs.LBPolicy = WeightedRandom
	case cfg.MessageIs(&roundrobinv3.RoundRobin{}):
		cs.LBPolicy = RoundRobin
	case cfg.MessageIs(&lrv3.LeastRequest{}):
		m := &lrv3.LeastRequest{}
		if err := cfg.UnmarshalTo(m); err != nil {
			return false, err
		}
		cs.LBPolicy = LeastRequest
		if v := m.GetChoiceCount(); v != nil {
			cs.LeastRequestChoiceCount = v.GetValue()
		}
		if b := m.GetActiveRequestBias(); b != nil {
			v := b.GetDefaultValue()
			cs.ActiveRequestBias = &v
		}
	case cfg.MessageIs(&ringhashv3.RingHash{}):
		m := &ringhashv3.RingHash{}
		if err := cfg.UnmarshalTo(m); err != nil {
			return false, err
		}
		if f := m.GetHashFunction(); f != ringhashv3.RingHash_XX_HASH && f != ringhashv3.RingHash_DEFAULT_HASH {
			return false, fmt.Errorf("hash_function %s is not supported (want XX_HASH)", f)
		}
		cs.LBPolicy = RingHash
		if v := m.GetMinimumRingSize(); v != nil {
			cs.RingMinSize = v.GetValue()
		}
		if v := m.GetMaximumRingSize(); v != nil {
			cs.RingMaxSize = v.GetValue()
		}
	case cfg.MessageIs(&maglevv3.Maglev{}):
		m := &maglevv3.Maglev{}
		if err := cfg.UnmarshalTo(m); err != nil {
			return false, err
		}
		cs.LBPolicy = Maglev
		if v := m.GetTableSize(); v != nil {
			cs.MaglevTableSize = v.GetValue()
		}
	default:
		return false, nil
	}
	return true, nil
}

func decodeOutlier(od *clusterv3.OutlierDetection) *OutlierSettings {
	o := DefaultOutlier()
	setU32(&o.Consecutive5xx, od.GetConsecutive_5Xx())
	setU32(&o.ConsecutiveGatewayFailure, od.GetConsecutiveGatewayFailure())
	setU32(&o.ConsecutiveLocalOriginFailure, od.GetConsecutiveLocalOriginFailure())
	setU32(&o.MaxEjectionPercent, od.GetMaxEjectionPercent())
	setU32(&o.EnforcingConsecutive5xx, od.GetEnforcingConsecutive_5Xx())
	setU32(&o.EnforcingConsecutiveGatewayFailure, od.GetEnforcingConsecutiveGatewayFailure())
	setU32(&o.EnforcingConsecutiveLocalOriginFailure, od.GetEnforcingConsecutiveLocalOriginFailure())
	setU32(&o.EnforcingSuccessRate, od.GetEnforcingSuccessRate())
	setU32(&o.SuccessRateMinimumHosts, od.GetSuccessRateMinimumHosts())
	setU32(&o.SuccessRateRequestVolume, od.GetSuccessRateRequestVolume())
	setU32(&o.SuccessRateStdevFactor, od.GetSuccessRateStdevFactor())
	setU32(&o.EnforcingFailurePercentage, od.GetEnforcingFailurePercentage())
	setU32(&o.FailurePercentageThreshold, od.GetFailurePercentageThreshold())
	setU32(&o.FailurePercentageMinimumHosts, od.GetFailurePercentageMinimumHosts())
	setU32(&o.FailurePercentageRequestVolume, od.GetFailurePercentageRequestVolume())
	o.SplitExternalLocalOriginErrors = od.GetSplitExternalLocalOriginErrors()
	if v := od.GetSuccessfulActiveHealthCheckUnejectHost(); v != nil {
		o.SuccessfulActiveHealthCheckUnejectHost = v.GetValue()
	}
	if v := od.GetAlwaysEjectOneHost(); v != nil {
		o.AlwaysEjectOneHost = v.GetValue()
	} else {
		// Absent means Envoy's default (false), not ours.
		o.AlwaysEjectOneHost = false
	}
	if d := od.GetInterval(); d != nil {
		o.Interval = d.AsDuration()
	}
	if d := od.GetBaseEjectionTime(); d != nil {
		o.BaseEjectionTime = d.AsDuration()
	}
	if d := od.GetMaxEjectionTime(); d != nil {
		o.MaxEjectionTime = d.AsDuration()
	}
	return o
}

func decodeHealthCheck(hc *corev3.HealthCheck) (*HealthCheckSettings, error) {
	h := &HealthCheckSettings{
		Interval:           hc.GetInterval().AsDuration(),
		Timeout:            hc.GetTimeout().AsDuration(),
		UnhealthyThreshold: hc.GetUnhealthyThreshold().GetValue(),
		HealthyThreshold:   hc.GetHealthyThreshold().GetValue(),
	}
	if d := hc.GetNoTrafficInterval(); d != nil {
		h.NoTrafficInterval = d.AsDuration()
	}
	switch {
	case hc.GetHttpHealthCheck() != nil:
		h.HTTPPath = hc.GetHttpHealthCheck().GetPath()
	case hc.GetTcpHealthCheck() != nil:
		h.TCP = true
	case hc.GetGrpcHealthCheck() != nil:
		h.GRPC = true
		h.GRPCServiceName = hc.GetGrpcHealthCheck().GetServiceName()
	default:
		return nil, fmt.Errorf("health checker %T is not supported (want http, tcp or grpc)", hc.GetHealthChecker())
	}
	return h, nil
}

// DecodeLoadAssignment validates a ClusterLoadAssignment and returns its
// endpoints. Only the endpoints of the lowest priority present are used
// (Envoy's failover priorities are not implemented); locality weights are
// ignored and endpoint weights are used as they are, as Envoy does without
// locality-weighted load balancing. A missing load_balancing_weight is 1.
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
	minPrio, havePrio := uint32(0), false
	for _, loc := range cla.GetEndpoints() {
		if !havePrio || loc.GetPriority() < minPrio {
			minPrio, havePrio = loc.GetPriority(), true
		}
	}
	var eps []discovery.Endpoint
	seen := map[string]bool{}
	i := -1
	for _, loc := range cla.GetEndpoints() {
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
			if loc.GetPriority() != minPrio {
				continue
			}
			d := discovery.Endpoint{Address: addr, Weight: weight, Health: decodeHealth(lb.GetHealthStatus())}
			if st := lb.GetMetadata().GetFilterMetadata()[metaNamespace]; st != nil {
				d.Meta = make(map[string]string, len(st.GetFields()))
				for k, v := range st.GetFields() {
					d.Meta[k] = v.GetStringValue()
				}
			}
			eps = append(eps, d)
		}
	}
	if err := cla.ValidateAll(); err != nil {
		return bad("%v", err)
	}
	return eps, nil
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
