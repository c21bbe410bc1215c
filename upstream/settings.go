package upstream

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/health"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
)

// Settings is everything said about one upstream service besides its name,
// its listener and its protocol, under the YAML keys of an upstreams[]
// entry. A zero value or nil pointer means "left out"; SetDefaults fills
// Envoy's defaults (or ours, where the README says so).
type Settings struct {
	LBPolicy   string          `yaml:"lb_policy"`
	LB         balancer.Config `yaml:",inline"`
	HashPolicy []HashPolicy    `yaml:"hash_policy"`
	// ConnectTimeout bounds one connection attempt.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// Timeout bounds a whole request, retries included (0 disables it).
	Timeout *time.Duration `yaml:"timeout"`
	// IdleTimeout closes pooled upstream HTTP connections left idle.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// TCPIdleTimeout closes a TCP relay (protocol tcp) with no bytes in
	// either direction for this long; 0 disables it (Envoy's tcp_proxy
	// idle_timeout).
	TCPIdleTimeout        *time.Duration   `yaml:"tcp_idle_timeout"`
	RetryPolicy           *RetryPolicy     `yaml:"retry_policy"`
	OutlierDetection      *outlier.Config  `yaml:"outlier_detection"`
	CircuitBreakers       *breaker.Config  `yaml:"circuit_breakers"`
	HealthCheck           *health.Config   `yaml:"health_check"`
	HealthyPanicThreshold *float64         `yaml:"healthy_panic_threshold"`
	SlowStart             *SlowStartConfig `yaml:"slow_start"`
	MaxIdleConnsPerHost   int              `yaml:"max_idle_connections_per_endpoint"`
	// Failover names the other datacenters whose instances back the
	// upstream, in order: the local datacenter is priority 0, each listed
	// one the next (Consul discovery only). Left out, Consul's
	// service-resolver config entry may say it.
	Failover *Failover `yaml:"failover"`
	// ZoneAware enables Envoy's zone-aware routing inside each priority
	// level (the sidecar's own zone must be known).
	ZoneAware bool `yaml:"zone_aware"`
	// ZoneAwareMinClusterSize is Envoy's zone_aware_lb_config
	// min_cluster_size: a level with fewer hosts is balanced without
	// regard to zones.
	ZoneAwareMinClusterSize *int `yaml:"zone_aware_min_cluster_size"`
}

// Failover is the failover datacenters of an upstream (the Failover of
// Consul's service-resolver config entry).
type Failover struct {
	Datacenters []string `yaml:"datacenters"`
}

// HashPolicy says what ring_hash and maglev hash on (Envoy's route hash_policy).
type HashPolicy struct {
	Header   string `yaml:"header"`
	SourceIP bool   `yaml:"source_ip"`
}

// RetryPolicy is Envoy's route retry policy.
type RetryPolicy struct {
	RetryOn              string        `yaml:"retry_on"`
	NumRetries           *int          `yaml:"num_retries"`
	PerTryTimeout        time.Duration `yaml:"per_try_timeout"`
	RetriableStatusCodes []int         `yaml:"retriable_status_codes"`
	RetryBackOff         BackOff       `yaml:"retry_back_off"`
	// MaxBufferBytes bounds the request body kept for replay; a larger
	// body is streamed and not retried (Envoy's per_request_buffer_limit).
	MaxBufferBytes int64 `yaml:"max_buffer_bytes"`
}

// BackOff is Envoy's retry_back_off.
type BackOff struct {
	BaseInterval time.Duration `yaml:"base_interval"`
	MaxInterval  time.Duration `yaml:"max_interval"`
}

// SlowStartConfig is Envoy's slow_start_config.
type SlowStartConfig struct {
	Window           time.Duration `yaml:"slow_start_window"`
	Aggression       float64       `yaml:"aggression"`
	MinWeightPercent float64       `yaml:"min_weight_percent"`
}

// Defaults (Envoy's unless the README says otherwise).
const (
	DefaultConnectTimeout = 5 * time.Second
	DefaultTimeout        = 15 * time.Second
	DefaultIdleTimeout    = time.Hour // Envoy's common_http_protocol_options.idle_timeout
	DefaultTCPIdleTimeout = time.Hour // Envoy's tcp_proxy idle_timeout
	DefaultPanicThreshold = 50.0
	DefaultRetryBase      = 25 * time.Millisecond
	DefaultMaxBuffer      = 64 << 10
	DefaultIdlePerHost    = 256
	// DefaultZoneAwareMinClusterSize is Envoy's min_cluster_size.
	DefaultZoneAwareMinClusterSize = 6
	// DefaultRetryOn and DefaultNumRetries are Istio's default retry
	// policy: retry only where the request never reached the app.
	DefaultRetryOn    = "connect-failure,refused-stream"
	DefaultNumRetries = 2
)

// SetDefaults fills every key left out with its default. Keys that are set
// (including to 0 where 0 means something) are kept.
func (s *Settings) SetDefaults() {
	if s.LBPolicy == "" {
		s.LBPolicy = balancer.RoundRobin
	}
	s.LB.SetDefaults()
	if s.ConnectTimeout == 0 {
		s.ConnectTimeout = DefaultConnectTimeout
	}
	if s.Timeout == nil {
		s.Timeout = new(time.Duration(DefaultTimeout))
	}
	if s.IdleTimeout == 0 {
		s.IdleTimeout = DefaultIdleTimeout
	}
	if s.TCPIdleTimeout == nil {
		s.TCPIdleTimeout = new(time.Duration(DefaultTCPIdleTimeout))
	}
	if s.RetryPolicy == nil {
		s.RetryPolicy = &RetryPolicy{RetryOn: DefaultRetryOn, NumRetries: new(DefaultNumRetries)}
	}
	rp := s.RetryPolicy
	if rp.NumRetries == nil {
		rp.NumRetries = new(1) // Envoy's default
	}
	if rp.RetryBackOff.BaseInterval == 0 {
		rp.RetryBackOff.BaseInterval = DefaultRetryBase
	}
	if rp.RetryBackOff.MaxInterval == 0 {
		rp.RetryBackOff.MaxInterval = 10 * rp.RetryBackOff.BaseInterval
	}
	if rp.MaxBufferBytes == 0 {
		rp.MaxBufferBytes = DefaultMaxBuffer
	}
	if s.OutlierDetection == nil {
		s.OutlierDetection = &outlier.Config{}
	}
	s.OutlierDetection.SetDefaults()
	if s.CircuitBreakers == nil {
		s.CircuitBreakers = &breaker.Config{}
	}
	s.CircuitBreakers.SetDefaults()
	if s.HealthCheck != nil {
		s.HealthCheck.SetDefaults()
	}
	if s.HealthyPanicThreshold == nil {
		s.HealthyPanicThreshold = new(float64(DefaultPanicThreshold))
	}
	if s.SlowStart != nil {
		if s.SlowStart.Aggression == 0 {
			s.SlowStart.Aggression = 1.0
		}
		if s.SlowStart.MinWeightPercent == 0 {
			s.SlowStart.MinWeightPercent = 10
		}
	}
	if s.MaxIdleConnsPerHost == 0 {
		s.MaxIdleConnsPerHost = DefaultIdlePerHost
	}
	if s.ZoneAwareMinClusterSize == nil {
		s.ZoneAwareMinClusterSize = new(DefaultZoneAwareMinClusterSize)
	}
}

// ErrInvalid is matched (errors.Is) by every KeyError.
var ErrInvalid = errors.New("upstream: invalid settings")

// KeyError names a bad key, its value and what is wrong with it.
type KeyError struct {
	Key   string // full key path, e.g. "upstreams[0].lb_policy"
	Value any    // nil: the message names no value
	Why   string
}

func (e *KeyError) Error() string {
	if e.Value == nil {
		return e.Key + ": " + e.Why
	}
	return fmt.Sprintf("%s: %s %s", e.Key, quote(e.Value), e.Why)
}

// Is makes errors.Is(err, ErrInvalid) hold.
func (e *KeyError) Is(target error) bool { return target == ErrInvalid }

func bad(key string, value any, why string) error { return &KeyError{Key: key, Value: value, Why: why} }

func quote(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("%q", v)
	case time.Duration:
		return fmt.Sprintf("%q", v.String())
	}
	return fmt.Sprint(v)
}

// Validate checks the settings; p is the key path of the enclosing object
// (e.g. "upstreams[0]"). Keys left out stand for their defaults. Errors
// name the full key path and the bad value: a *KeyError, or the error of
// the section's own package (balancer, outlier, breaker, health).
func (s *Settings) Validate(p string) error {
	if s.LBPolicy != "" && !balancer.ValidPolicy(s.LBPolicy) {
		return bad(p+".lb_policy", s.LBPolicy, "must be one of "+balancer.PolicyList())
	}
	if err := s.LB.Validate(p); err != nil {
		return err
	}
	for i, h := range s.HashPolicy {
		if (h.Header == "") == !h.SourceIP {
			return bad(fmt.Sprintf("%s.hash_policy[%d]", p, i), nil, "set exactly one of header, source_ip")
		}
	}
	if s.ConnectTimeout < 0 {
		return bad(p+".connect_timeout", s.ConnectTimeout, "must be > 0")
	}
	if s.Timeout != nil && *s.Timeout < 0 {
		return bad(p+".timeout", *s.Timeout, "must be >= 0 (0 disables it)")
	}
	if s.IdleTimeout < 0 {
		return bad(p+".idle_timeout", s.IdleTimeout, "must be > 0")
	}
	if s.TCPIdleTimeout != nil && *s.TCPIdleTimeout < 0 {
		return bad(p+".tcp_idle_timeout", *s.TCPIdleTimeout, "must be >= 0 (0 disables it)")
	}
	if rp := s.RetryPolicy; rp != nil {
		if err := rp.Validate(p + ".retry_policy"); err != nil {
			return err
		}
	}
	if o := s.OutlierDetection; o != nil {
		if err := o.Validate(p + ".outlier_detection"); err != nil {
			return err
		}
	}
	if b := s.CircuitBreakers; b != nil {
		if err := b.Validate(p + ".circuit_breakers"); err != nil {
			return err
		}
	}
	if hc := s.HealthCheck; hc != nil {
		if err := hc.Validate(p + ".health_check"); err != nil {
			return err
		}
	}
	if t := s.HealthyPanicThreshold; t != nil && (*t < 0 || *t > 100) {
		return bad(p+".healthy_panic_threshold", *t, "must be a percentage in 0..100")
	}
	if ss := s.SlowStart; ss != nil {
		if ss.Window <= 0 {
			return bad(p+".slow_start.slow_start_window", ss.Window, "must be > 0")
		}
		if ss.Aggression <= 0 {
			return bad(p+".slow_start.aggression", ss.Aggression, "must be > 0")
		}
		if ss.MinWeightPercent <= 0 || ss.MinWeightPercent > 100 {
			return bad(p+".slow_start.min_weight_percent", ss.MinWeightPercent, "must be in (0, 100]")
		}
	}
	if s.MaxIdleConnsPerHost < 0 {
		return bad(p+".max_idle_connections_per_endpoint", s.MaxIdleConnsPerHost, "must be >= 0")
	}
	if f := s.Failover; f != nil {
		if len(f.Datacenters) == 0 {
			return bad(p+".failover.datacenters", nil, "must list at least one datacenter")
		}
		seen := map[string]int{}
		for i, dc := range f.Datacenters {
			k := fmt.Sprintf("%s.failover.datacenters[%d]", p, i)
			if !ValidDatacenter(dc) {
				return bad(k, dc, "is not a datacenter name (letters, digits, - and _)")
			}
			if j, dup := seen[dc]; dup {
				return bad(k, dc, fmt.Sprintf("repeats %s.failover.datacenters[%d]", p, j))
			}
			seen[dc] = i
		}
	}
	if n := s.ZoneAwareMinClusterSize; n != nil && *n < 0 {
		return bad(p+".zone_aware_min_cluster_size", *n, "must be >= 0")
	}
	return nil
}

// ValidDatacenter reports whether name is a valid Consul datacenter name:
// letters, digits, '-' and '_', at most 64 characters.
func ValidDatacenter(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// Validate checks a retry policy; p is its key path. Unset keys stand for
// their defaults.
func (rp *RetryPolicy) Validate(p string) error {
	for _, on := range strings.Split(rp.RetryOn, ",") {
		on = strings.TrimSpace(on)
		if on == "" {
			continue
		}
		if _, ok := ParseRetryOn(on); !ok {
			return bad(p+".retry_on", on, "is not a retry condition ("+RetryOnList()+")")
		}
	}
	if n := rp.NumRetries; n != nil && (*n < 0 || *n > 10) {
		return bad(p+".num_retries", *n, "must be in 0..10")
	}
	if rp.PerTryTimeout < 0 {
		return bad(p+".per_try_timeout", rp.PerTryTimeout, "must be >= 0")
	}
	for i, code := range rp.RetriableStatusCodes {
		if code < 100 || code > 599 {
			return bad(fmt.Sprintf("%s.retriable_status_codes[%d]", p, i), code, "is not an HTTP status code")
		}
	}
	base, maxI := rp.RetryBackOff.BaseInterval, rp.RetryBackOff.MaxInterval
	if base < 0 {
		return bad(p+".retry_back_off.base_interval", base, "must be > 0")
	}
	if base == 0 {
		base = DefaultRetryBase
	}
	if maxI != 0 && maxI < base {
		return bad(p+".retry_back_off.max_interval", maxI, "must be >= base_interval")
	}
	if rp.MaxBufferBytes < 0 {
		return bad(p+".max_buffer_bytes", rp.MaxBufferBytes, "must be >= 0")
	}
	return nil
}
