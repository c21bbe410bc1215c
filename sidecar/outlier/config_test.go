package outlier

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestYAMLKeysAreEnvoys(t *testing.T) {
	// The keys of envoy.config.cluster.v3.OutlierDetection that we support,
	// plus always_eject_one_host (also Envoy's, with a different default).
	want := []string{
		"always_eject_one_host",
		"base_ejection_time",
		"consecutive_5xx",
		"consecutive_gateway_failure",
		"consecutive_local_origin_failure",
		"enforcing_consecutive_5xx",
		"enforcing_consecutive_gateway_failure",
		"enforcing_consecutive_local_origin_failure",
		"enforcing_failure_percentage",
		"enforcing_failure_percentage_local_origin",
		"enforcing_local_origin_success_rate",
		"enforcing_success_rate",
		"failure_percentage_minimum_hosts",
		"failure_percentage_request_volume",
		"failure_percentage_threshold",
		"interval",
		"max_ejection_percent",
		"max_ejection_time",
		"max_ejection_time_jitter",
		"split_external_local_origin_errors",
		"success_rate_minimum_hosts",
		"success_rate_request_volume",
		"success_rate_stdev_factor",
		"successful_active_health_check_uneject_host",
	}
	var got []string
	rt := reflect.TypeFor[Config]()
	for i := range rt.NumField() {
		f := rt.Field(i)
		y, j := f.Tag.Get("yaml"), f.Tag.Get("json")
		if y != j {
			t.Errorf("field %s: yaml tag %q != json tag %q", f.Name, y, j)
		}
		got = append(got, y)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("yaml keys:\n got %v\nwant %v", got, want)
	}
}

func TestSetDefaults(t *testing.T) {
	var c Config
	c.SetDefaults()
	checks := []struct {
		key       string
		got, want any
	}{
		{"consecutive_5xx", *c.Consecutive5xx, uint32(5)},
		{"consecutive_gateway_failure", *c.ConsecutiveGatewayFailure, uint32(5)},
		{"consecutive_local_origin_failure", *c.ConsecutiveLocalOriginFailure, uint32(5)},
		{"split_external_local_origin_errors", c.SplitExternalLocalOriginErrors, false},
		{"enforcing_consecutive_5xx", *c.EnforcingConsecutive5xx, uint32(100)},
		{"enforcing_consecutive_gateway_failure", *c.EnforcingConsecutiveGatewayFailure, uint32(0)},
		{"enforcing_consecutive_local_origin_failure", *c.EnforcingConsecutiveLocalOriginFailure, uint32(100)},
		{"interval", c.Interval, 10 * time.Second},
		{"base_ejection_time", c.BaseEjectionTime, 30 * time.Second},
		{"max_ejection_time", c.MaxEjectionTime, 300 * time.Second},
		{"max_ejection_time_jitter", c.MaxEjectionTimeJitter, time.Duration(0)},
		{"max_ejection_percent", *c.MaxEjectionPercent, uint32(10)},
		{"success_rate_minimum_hosts", *c.SuccessRateMinimumHosts, uint32(5)},
		{"success_rate_request_volume", *c.SuccessRateRequestVolume, uint32(100)},
		{"success_rate_stdev_factor", *c.SuccessRateStdevFactor, uint32(1900)},
		{"enforcing_success_rate", *c.EnforcingSuccessRate, uint32(100)},
		{"failure_percentage_threshold", *c.FailurePercentageThreshold, uint32(85)},
		{"failure_percentage_minimum_hosts", *c.FailurePercentageMinimumHosts, uint32(5)},
		{"failure_percentage_request_volume", *c.FailurePercentageRequestVolume, uint32(50)},
		{"enforcing_failure_percentage", *c.EnforcingFailurePercentage, uint32(0)},
		{"enforcing_local_origin_success_rate", *c.EnforcingLocalOriginSuccessRate, uint32(100)},
		{"enforcing_failure_percentage_local_origin", *c.EnforcingFailurePercentageLocalOrigin, uint32(0)},
		{"successful_active_health_check_uneject_host", *c.SuccessfulActiveHealthCheckUnejectHost, true},
		{"always_eject_one_host", *c.AlwaysEjectOneHost, true},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.key, ck.got, ck.want)
		}
	}
}

func TestSetDefaultsKeepsExplicitZeros(t *testing.T) {
	const doc = `
enforcing_consecutive_5xx: 0
max_ejection_percent: 0
consecutive_5xx: 0
successful_active_health_check_uneject_host: false
always_eject_one_host: false
interval: 2s
base_ejection_time: 400s
`
	var c Config
	if err := yaml.Unmarshal([]byte(doc), &c); err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if *c.EnforcingConsecutive5xx != 0 || *c.MaxEjectionPercent != 0 || *c.Consecutive5xx != 0 {
		t.Errorf("explicit zeros overwritten: enforcing_consecutive_5xx=%d max_ejection_percent=%d consecutive_5xx=%d",
			*c.EnforcingConsecutive5xx, *c.MaxEjectionPercent, *c.Consecutive5xx)
	}
	if *c.SuccessfulActiveHealthCheckUnejectHost || *c.AlwaysEjectOneHost {
		t.Errorf("explicit false overwritten")
	}
	if c.Interval != 2*time.Second {
		t.Errorf("interval = %v, want 2s", c.Interval)
	}
	// Unset max_ejection_time is max(300s, base_ejection_time), as in Envoy.
	if c.MaxEjectionTime != 400*time.Second {
		t.Errorf("max_ejection_time = %v, want 400s (base_ejection_time)", c.MaxEjectionTime)
	}
	if *c.EnforcingSuccessRate != 100 {
		t.Errorf("unset enforcing_success_rate = %d, want 100", *c.EnforcingSuccessRate)
	}
}

func TestValidate(t *testing.T) {
	const path = "upstreams[0].outlier_detection"
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // "" for valid
	}{
		{"empty is valid", Config{}, ""},
		{"defaults are valid", func() Config { var c Config; c.SetDefaults(); return c }(), ""},
		{"zeros are valid", Config{EnforcingConsecutive5xx: new(uint32(0)), MaxEjectionPercent: new(uint32(0))}, ""},
		{"percent 100 is valid", Config{MaxEjectionPercent: new(uint32(100))}, ""},
		{"negative interval", Config{Interval: -time.Second},
			`upstreams[0].outlier_detection.interval: "-1s" must be > 0`},
		{"negative base", Config{BaseEjectionTime: -time.Second},
			`upstreams[0].outlier_detection.base_ejection_time: "-1s" must be > 0`},
		{"negative jitter", Config{MaxEjectionTimeJitter: -time.Millisecond},
			`upstreams[0].outlier_detection.max_ejection_time_jitter: "-1ms" must be >= 0`},
		{"max below base", Config{BaseEjectionTime: time.Minute, MaxEjectionTime: 30 * time.Second},
			`upstreams[0].outlier_detection.max_ejection_time: "30s" must be >= base_ejection_time (1m0s)`},
		{"max_ejection_percent over 100", Config{MaxEjectionPercent: new(uint32(101))},
			`upstreams[0].outlier_detection.max_ejection_percent: 101 must be <= 100`},
		{"enforcing over 100", Config{EnforcingFailurePercentageLocalOrigin: new(uint32(200))},
			`upstreams[0].outlier_detection.enforcing_failure_percentage_local_origin: 200 must be <= 100`},
		{"threshold over 100", Config{FailurePercentageThreshold: new(uint32(101))},
			`upstreams[0].outlier_detection.failure_percentage_threshold: 101 must be <= 100`},
		{"counts are not percentages", Config{SuccessRateRequestVolume: new(uint32(1000)), SuccessRateStdevFactor: new(uint32(5000))}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate(path)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want %q", tt.wantErr)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			if !strings.HasSuffix(err.Error(), ": "+tt.wantErr) {
				t.Errorf("error = %q, want suffix %q", err, tt.wantErr)
			}
		})
	}
}
