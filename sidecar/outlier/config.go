package outlier

import (
	"errors"
	"fmt"
	"time"
)

// ErrInvalidConfig is wrapped by every error Validate returns.
var ErrInvalidConfig = errors.New("outlier: invalid config")

// Envoy's defaults (envoy/config/cluster/v3/outlier_detection.proto), except
// DefaultAlwaysEjectOneHost, which is our deliberate difference.
const (
	DefaultConsecutive5xx                         = 5
	DefaultConsecutiveGatewayFailure              = 5
	DefaultConsecutiveLocalOriginFailure          = 5
	DefaultEnforcingConsecutive5xx                = 100
	DefaultEnforcingConsecutiveGatewayFailure     = 0
	DefaultEnforcingConsecutiveLocalOriginFailure = 100
	DefaultInterval                               = 10 * time.Second
	DefaultBaseEjectionTime                       = 30 * time.Second
	DefaultMaxEjectionTime                        = 300 * time.Second
	DefaultMaxEjectionTimeJitter                  = 0
	DefaultMaxEjectionPercent                     = 10
	DefaultSuccessRateMinimumHosts                = 5
	DefaultSuccessRateRequestVolume               = 100
	DefaultSuccessRateStdevFactor                 = 1900
	DefaultEnforcingSuccessRate                   = 100
	DefaultFailurePercentageThreshold             = 85
	DefaultFailurePercentageMinimumHosts          = 5
	DefaultFailurePercentageRequestVolume         = 50
	DefaultEnforcingFailurePercentage             = 0
	DefaultEnforcingLocalOriginSuccessRate        = 100
	DefaultEnforcingFailurePercentageLocalOrigin  = 0
	DefaultSuccessfulActiveHealthCheckUnejectHost = true

	// DefaultAlwaysEjectOneHost differs from Envoy (false there): with the
	// default max_ejection_percent of 10, a cluster of fewer than 10 hosts
	// could otherwise never eject anything (envoyproxy/envoy#27909, #34796).
	DefaultAlwaysEjectOneHost = true
)

// Config is Envoy's outlier_detection, under the same YAML keys. A nil
// pointer (or a zero duration) means "unset": SetDefaults fills it, and New
// treats it as its default. Pointers are used wherever 0 or false is a value
// a user may mean (enforcing_consecutive_5xx: 0 turns that detector off;
// max_ejection_percent: 0 forbids ejections unless always_eject_one_host).
//
// A consecutive_* threshold of 0 disables that detector, as in Envoy, where
// the counter never equals 0 after an increment.
type Config struct {
	Consecutive5xx                         *uint32       `yaml:"consecutive_5xx" json:"consecutive_5xx"`
	ConsecutiveGatewayFailure              *uint32       `yaml:"consecutive_gateway_failure" json:"consecutive_gateway_failure"`
	ConsecutiveLocalOriginFailure          *uint32       `yaml:"consecutive_local_origin_failure" json:"consecutive_local_origin_failure"`
	SplitExternalLocalOriginErrors         bool          `yaml:"split_external_local_origin_errors" json:"split_external_local_origin_errors"`
	EnforcingConsecutive5xx                *uint32       `yaml:"enforcing_consecutive_5xx" json:"enforcing_consecutive_5xx"`
	EnforcingConsecutiveGatewayFailure     *uint32       `yaml:"enforcing_consecutive_gateway_failure" json:"enforcing_consecutive_gateway_failure"`
	EnforcingConsecutiveLocalOriginFailure *uint32       `yaml:"enforcing_consecutive_local_origin_failure" json:"enforcing_consecutive_local_origin_failure"`
	Interval                               time.Duration `yaml:"interval" json:"interval"`
	BaseEjectionTime                       time.Duration `yaml:"base_ejection_time" json:"base_ejection_time"`
	// MaxEjectionTime caps base_ejection_time × multiplier. Unset, it is
	// max(300s, base_ejection_time), as in Envoy.
	MaxEjectionTime          time.Duration `yaml:"max_ejection_time" json:"max_ejection_time"`
	MaxEjectionTimeJitter    time.Duration `yaml:"max_ejection_time_jitter" json:"max_ejection_time_jitter"`
	MaxEjectionPercent       *uint32       `yaml:"max_ejection_percent" json:"max_ejection_percent"`
	SuccessRateMinimumHosts  *uint32       `yaml:"success_rate_minimum_hosts" json:"success_rate_minimum_hosts"`
	SuccessRateRequestVolume *uint32       `yaml:"success_rate_request_volume" json:"success_rate_request_volume"`
	// SuccessRateStdevFactor is in thousandths: 1900 means 1.9.
	SuccessRateStdevFactor                 *uint32 `yaml:"success_rate_stdev_factor" json:"success_rate_stdev_factor"`
	EnforcingSuccessRate                   *uint32 `yaml:"enforcing_success_rate" json:"enforcing_success_rate"`
	FailurePercentageThreshold             *uint32 `yaml:"failure_percentage_threshold" json:"failure_percentage_threshold"`
	FailurePercentageMinimumHosts          *uint32 `yaml:"failure_percentage_minimum_hosts" json:"failure_percentage_minimum_hosts"`
	FailurePercentageRequestVolume         *uint32 `yaml:"failure_percentage_request_volume" json:"failure_percentage_request_volume"`
	EnforcingFailurePercentage             *uint32 `yaml:"enforcing_failure_percentage" json:"enforcing_failure_percentage"`
	EnforcingLocalOriginSuccessRate        *uint32 `yaml:"enforcing_local_origin_success_rate" json:"enforcing_local_origin_success_rate"`
	EnforcingFailurePercentageLocalOrigin  *uint32 `yaml:"enforcing_failure_percentage_local_origin" json:"enforcing_failure_percentage_local_origin"`
	SuccessfulActiveHealthCheckUnejectHost *bool   `yaml:"successful_active_health_check_uneject_host" json:"successful_active_health_check_uneject_host"`
	// AlwaysEjectOneHost lets one host be ejected even when
	// max_ejection_percent allows none. Default true (Envoy: false); see
	// DefaultAlwaysEjectOneHost.
	AlwaysEjectOneHost *bool `yaml:"always_eject_one_host" json:"always_eject_one_host"`
}

// SetDefaults fills every unset key with its default; keys the user set
// (including to 0 or false) are kept.
func (c *Config) SetDefaults() {
	for _, f := range c.uintFields() {
		if *f.p == nil {
			*f.p = new(f.def)
		}
	}
	if c.SuccessfulActiveHealthCheckUnejectHost == nil {
		c.SuccessfulActiveHealthCheckUnejectHost = new(DefaultSuccessfulActiveHealthCheckUnejectHost)
	}
	if c.AlwaysEjectOneHost == nil {
		c.AlwaysEjectOneHost = new(DefaultAlwaysEjectOneHost)
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.BaseEjectionTime == 0 {
		c.BaseEjectionTime = DefaultBaseEjectionTime
	}
	if c.MaxEjectionTime == 0 {
		c.MaxEjectionTime = max(DefaultMaxEjectionTime, c.BaseEjectionTime)
	}
}

// Validate checks the config as New would use it (unset keys stand for
// their defaults). path is this object's YAML key path, e.g.
// "upstreams[0].outlier_detection"; errors wrap ErrInvalidConfig and name
// the full key and the bad value.
func (c Config) Validate(path string) error {
	for _, f := range c.uintFields() {
		if f.percent && *f.p != nil && **f.p > 100 {
			return fmt.Errorf("%w: %s: %d must be <= 100", ErrInvalidConfig, joinKey(path, f.key), **f.p)
		}
	}
	for _, d := range []struct {
		key      string
		v        time.Duration
		positive bool
	}{
		{"interval", c.Interval, true},
		{"base_ejection_time", c.BaseEjectionTime, true},
		{"max_ejection_time", c.MaxEjectionTime, true},
		{"max_ejection_time_jitter", c.MaxEjectionTimeJitter, false},
	} {
		if d.positive && d.v < 0 {
			return fmt.Errorf("%w: %s: %q must be > 0", ErrInvalidConfig, joinKey(path, d.key), d.v)
		}
		if !d.positive && d.v < 0 {
			return fmt.Errorf("%w: %s: %q must be >= 0", ErrInvalidConfig, joinKey(path, d.key), d.v)
		}
	}
	eff := c
	eff.SetDefaults()
	if eff.MaxEjectionTime < eff.BaseEjectionTime {
		// Envoy refuses this too ("max_ejection_time cannot be smaller than
		// base_ejection_time").
		return fmt.Errorf("%w: %s: %q must be >= base_ejection_time (%s)",
			ErrInvalidConfig, joinKey(path, "max_ejection_time"), eff.MaxEjectionTime, eff.BaseEjectionTime)
	}
	return nil
}

type uintField struct {
	key     string
	p       **uint32
	def     uint32
	percent bool // a percentage: 0..100
}

func (c *Config) uintFields() []uintField {
	return []uintField{
		{"consecutive_5xx", &c.Consecutive5xx, DefaultConsecutive5xx, false},
		{"consecutive_gateway_failure", &c.ConsecutiveGatewayFailure, DefaultConsecutiveGatewayFailure, false},
		{"consecutive_local_origin_failure", &c.ConsecutiveLocalOriginFailure, DefaultConsecutiveLocalOriginFailure, false},
		{"enforcing_consecutive_5xx", &c.EnforcingConsecutive5xx, DefaultEnforcingConsecutive5xx, true},
		{"enforcing_consecutive_gateway_failure", &c.EnforcingConsecutiveGatewayFailure, DefaultEnforcingConsecutiveGatewayFailure, true},
		{"enforcing_consecutive_local_origin_failure", &c.EnforcingConsecutiveLocalOriginFailure, DefaultEnforcingConsecutiveLocalOriginFailure, true},
		{"max_ejection_percent", &c.MaxEjectionPercent, DefaultMaxEjectionPercent, true},
		{"success_rate_minimum_hosts", &c.SuccessRateMinimumHosts, DefaultSuccessRateMinimumHosts, false},
		{"success_rate_request_volume", &c.SuccessRateRequestVolume, DefaultSuccessRateRequestVolume, false},
		{"success_rate_stdev_factor", &c.SuccessRateStdevFactor, DefaultSuccessRateStdevFactor, false},
		{"enforcing_success_rate", &c.EnforcingSuccessRate, DefaultEnforcingSuccessRate, true},
		{"failure_percentage_threshold", &c.FailurePercentageThreshold, DefaultFailurePercentageThreshold, true},
		{"failure_percentage_minimum_hosts", &c.FailurePercentageMinimumHosts, DefaultFailurePercentageMinimumHosts, false},
		{"failure_percentage_request_volume", &c.FailurePercentageRequestVolume, DefaultFailurePercentageRequestVolume, false},
		{"enforcing_failure_percentage", &c.EnforcingFailurePercentage, DefaultEnforcingFailurePercentage, true},
		{"enforcing_local_origin_success_rate", &c.EnforcingLocalOriginSuccessRate, DefaultEnforcingLocalOriginSuccessRate, true},
		{"enforcing_failure_percentage_local_origin", &c.EnforcingFailurePercentageLocalOrigin, DefaultEnforcingFailurePercentageLocalOrigin, true},
	}
}

func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
