package xds

import (
	"fmt"
	"time"
)

// Load-balancing policy names (Envoy's lb_policy names, lower case; the same
// strings as sidecar/balancer, repeated here so that xds does not import the
// data plane).
const (
	WeightedRandom = "weighted_random"
	RoundRobin     = "round_robin"
	LeastRequest   = "least_request"
	RingHash       = "ring_hash"
	Maglev         = "maglev"
)

// ClusterSettings is what the xDS server says about one upstream service
// besides its endpoints, and what the xDS client hands back from CDS. The
// fields carry effective values: the caller fills defaults before handing
// settings to the server (Defaults gives Envoy's). The client fills Envoy's
// defaults for every field a received Cluster leaves out.
//
// Zero values that mean "leave the field out" (Envoy's default then
// applies): LBPolicy "" (round_robin), ConnectTimeout 0, LeastRequestChoiceCount
// 0, RingMinSize/RingMaxSize 0, MaglevTableSize 0, nil pointers.
type ClusterSettings struct {
	Service string
	// LBPolicy is one of weighted_random, round_robin, least_request,
	// ring_hash, maglev.
	LBPolicy       string
	ConnectTimeout time.Duration

	// LeastRequestChoiceCount is P2C's choice_count (Envoy default 2).
	LeastRequestChoiceCount uint32
	// ActiveRequestBias is least request's active_request_bias (default 1.0).
	ActiveRequestBias *float64
	// RingMinSize and RingMaxSize bound the ring (ring_hash, default
	// 1024..8M; maglev falls back to ring_hash on clients without maglev).
	RingMinSize, RingMaxSize uint64
	// MaglevTableSize is maglev's table_size (default 65537, a prime).
	MaglevTableSize uint64
	// HealthyPanicThreshold is a percentage (Envoy default 50; 0 disables
	// panic mode).
	HealthyPanicThreshold *float64

	Outlier     *OutlierSettings
	Breakers    *BreakerSettings
	HealthCheck *HealthCheckSettings
}

// OutlierSettings mirror envoy.config.cluster.v3.OutlierDetection. Every
// number is sent as it is (0 is meaningful for the enforcing_* percentages);
// a zero duration is left out.
type OutlierSettings struct {
	Consecutive5xx                         uint32
	ConsecutiveGatewayFailure              uint32
	ConsecutiveLocalOriginFailure          uint32
	Interval                               time.Duration
	BaseEjectionTime                       time.Duration
	MaxEjectionTime                        time.Duration
	MaxEjectionPercent                     uint32
	EnforcingConsecutive5xx                uint32
	EnforcingConsecutiveGatewayFailure     uint32
	EnforcingConsecutiveLocalOriginFailure uint32
	EnforcingSuccessRate                   uint32
	SuccessRateMinimumHosts                uint32
	SuccessRateRequestVolume               uint32
	SuccessRateStdevFactor                 uint32
	EnforcingFailurePercentage             uint32
	FailurePercentageThreshold             uint32
	FailurePercentageMinimumHosts          uint32
	FailurePercentageRequestVolume         uint32
	SplitExternalLocalOriginErrors         bool
	SuccessfulActiveHealthCheckUnejectHost bool
	AlwaysEjectOneHost                     bool
}

// BreakerSettings mirror the default-priority thresholds of
// envoy.config.cluster.v3.CircuitBreakers.
type BreakerSettings struct {
	MaxConnections     uint32
	MaxPendingRequests uint32
	MaxRequests        uint32
	MaxRetries         uint32
	// RetryBudget, when set, replaces MaxRetries.
	RetryBudget *RetryBudget
}

// RetryBudget mirrors CircuitBreakers.Thresholds.RetryBudget.
type RetryBudget struct {
	BudgetPercent       float64 // default 20
	MinRetryConcurrency uint32  // default 3
}

// HealthCheckSettings mirror one envoy.config.core.v3.HealthCheck. Exactly
// one of HTTPPath, TCP and GRPC selects the checker.
type HealthCheckSettings struct {
	HTTPPath        string
	TCP             bool
	GRPC            bool
	GRPCServiceName string
	// Envoy requires the four below; a zero value is sent as our default
	// (interval 5s, timeout 1s, unhealthy 3, healthy 2).
	Interval           time.Duration
	Timeout            time.Duration
	UnhealthyThreshold uint32
	HealthyThreshold   uint32
	// NoTrafficInterval is left out when zero (Envoy default 60s).
	NoTrafficInterval time.Duration
}

// Health check defaults we fill where Envoy requires a value.
const (
	DefaultHealthCheckInterval   = 5 * time.Second
	DefaultHealthCheckTimeout    = time.Second
	DefaultUnhealthyThreshold    = 3
	DefaultHealthyThreshold      = 2
	DefaultConnectTimeout        = 5 * time.Second
	DefaultHealthyPanicThreshold = 50.0
)

// Defaults returns Envoy's defaults for a cluster named service: round
// robin, a 5s connect timeout, outlier detection and circuit breakers with
// Envoy's default values, no active health check. The client fills these
// for whatever a received Cluster leaves out.
func Defaults(service string) ClusterSettings {
	bias, panicPct := 1.0, DefaultHealthyPanicThreshold
	return ClusterSettings{
		Service:                 service,
		LBPolicy:                RoundRobin,
		ConnectTimeout:          DefaultConnectTimeout,
		LeastRequestChoiceCount: 2,
		ActiveRequestBias:       &bias,
		RingMinSize:             1024,
		RingMaxSize:             8 << 20,
		MaglevTableSize:         65537,
		HealthyPanicThreshold:   &panicPct,
		Outlier:                 DefaultOutlier(),
		Breakers:                DefaultBreakers(),
	}
}

// DefaultOutlier returns Envoy's outlier detection defaults, except
// always_eject_one_host, which we turn on (see ANCHORS.md).
func DefaultOutlier() *OutlierSettings {
	return &OutlierSettings{
		Consecutive5xx:                         5,
		ConsecutiveGatewayFailure:              5,
		ConsecutiveLocalOriginFailure:          5,
		Interval:                               10 * time.Second,
		BaseEjectionTime:                       30 * time.Second,
		MaxEjectionTime:                        300 * time.Second,
		MaxEjectionPercent:                     10,
		EnforcingConsecutive5xx:                100,
		EnforcingConsecutiveGatewayFailure:     0,
		EnforcingConsecutiveLocalOriginFailure: 100,
		EnforcingSuccessRate:                   100,
		SuccessRateMinimumHosts:                5,
		SuccessRateRequestVolume:               100,
		SuccessRateStdevFactor:                 1900,
		EnforcingFailurePercentage:             0,
		FailurePercentageThreshold:             85,
		FailurePercentageMinimumHosts:          5,
		FailurePercentageRequestVolume:         50,
		SuccessfulActiveHealthCheckUnejectHost: true,
		AlwaysEjectOneHost:                     true,
	}
}

// DefaultBreakers returns Envoy's circuit breaker defaults.
func DefaultBreakers() *BreakerSettings {
	return &BreakerSettings{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3}
}

// validPolicy reports whether p names a policy we translate.
func validPolicy(p string) bool {
	switch p {
	case "", WeightedRandom, RoundRobin, LeastRequest, RingHash, Maglev:
		return true
	}
	return false
}

// Validate checks what the translation relies on; path names the settings
// in error messages (e.g. "upstreams[0]").
func (cs *ClusterSettings) Validate(path string) error {
	if cs.Service == "" {
		return fmt.Errorf("%w: %s.service: must not be empty", ErrInvalidSettings, path)
	}
	if !validPolicy(cs.LBPolicy) {
		return fmt.Errorf("%w: %s.lb_policy: %q is not one of weighted_random, round_robin, least_request, ring_hash, maglev",
			ErrInvalidSettings, path, cs.LBPolicy)
	}
	if cs.ConnectTimeout < 0 {
		return fmt.Errorf("%w: %s.connect_timeout: %q must be >= 0", ErrInvalidSettings, path, cs.ConnectTimeout)
	}
	if cs.LeastRequestChoiceCount == 1 {
		return fmt.Errorf("%w: %s.choice_count: 1 must be >= 2", ErrInvalidSettings, path)
	}
	if cs.RingMaxSize != 0 && cs.RingMinSize > cs.RingMaxSize {
		return fmt.Errorf("%w: %s.minimum_ring_size: %d must be <= maximum_ring_size %d", ErrInvalidSettings, path, cs.RingMinSize, cs.RingMaxSize)
	}
	if p := cs.HealthyPanicThreshold; p != nil && (*p < 0 || *p > 100) {
		return fmt.Errorf("%w: %s.healthy_panic_threshold: %v must be in 0..100", ErrInvalidSettings, path, *p)
	}
	if o := cs.Outlier; o != nil {
		for _, f := range []struct {
			key string
			v   uint32
		}{
			{"max_ejection_percent", o.MaxEjectionPercent},
			{"enforcing_consecutive_5xx", o.EnforcingConsecutive5xx},
			{"enforcing_consecutive_gateway_failure", o.EnforcingConsecutiveGatewayFailure},
			{"enforcing_consecutive_local_origin_failure", o.EnforcingConsecutiveLocalOriginFailure},
			{"enforcing_success_rate", o.EnforcingSuccessRate},
			{"enforcing_failure_percentage", o.EnforcingFailurePercentage},
			{"failure_percentage_threshold", o.FailurePercentageThreshold},
		} {
			if f.v > 100 {
				return fmt.Errorf("%w: %s.outlier_detection.%s: %d must be in 0..100", ErrInvalidSettings, path, f.key, f.v)
			}
		}
		for _, f := range []struct {
			key string
			v   time.Duration
		}{{"interval", o.Interval}, {"base_ejection_time", o.BaseEjectionTime}, {"max_ejection_time", o.MaxEjectionTime}} {
			if f.v < 0 {
				return fmt.Errorf("%w: %s.outlier_detection.%s: %q must be >= 0", ErrInvalidSettings, path, f.key, f.v)
			}
		}
	}
	if b := cs.Breakers; b != nil && b.RetryBudget != nil {
		if p := b.RetryBudget.BudgetPercent; p < 0 || p > 100 {
			return fmt.Errorf("%w: %s.circuit_breakers.retry_budget.budget_percent: %v must be in 0..100", ErrInvalidSettings, path, p)
		}
	}
	if h := cs.HealthCheck; h != nil {
		n := 0
		if h.HTTPPath != "" {
			n++
		}
		if h.TCP {
			n++
		}
		if h.GRPC {
			n++
		}
		if n != 1 {
			return fmt.Errorf("%w: %s.health_check: exactly one of http, tcp, grpc must be set (got %d)", ErrInvalidSettings, path, n)
		}
		if h.Interval < 0 || h.Timeout < 0 || h.NoTrafficInterval < 0 {
			return fmt.Errorf("%w: %s.health_check: durations must be >= 0", ErrInvalidSettings, path)
		}
	}
	return nil
}
