package upstream

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
)

func TestValidateNamesKeyAndValue(t *testing.T) {
	tests := []struct {
		name string
		s    Settings
		want string
	}{
		{"policy", Settings{LBPolicy: "fastest"},
			`upstreams[2].lb_policy: "fastest" must be one of weighted_random, round_robin, least_request, ring_hash, maglev`},
		{"connect timeout", Settings{ConnectTimeout: -time.Second}, `upstreams[2].connect_timeout: "-1s" must be > 0`},
		{"tcp idle timeout", Settings{TCPIdleTimeout: new(-time.Minute)}, `upstreams[2].tcp_idle_timeout: "-1m0s" must be >= 0 (0 disables it)`},
		{"retry_on", Settings{RetryPolicy: &RetryPolicy{RetryOn: "5xx, never"}},
			`upstreams[2].retry_policy.retry_on: "never" is not a retry condition (` + RetryOnList() + ")"},
		{"num_retries", Settings{RetryPolicy: &RetryPolicy{NumRetries: new(11)}}, `upstreams[2].retry_policy.num_retries: 11 must be in 0..10`},
		{"max_interval", Settings{RetryPolicy: &RetryPolicy{RetryBackOff: BackOff{MaxInterval: time.Millisecond}}},
			`upstreams[2].retry_policy.retry_back_off.max_interval: "1ms" must be >= base_interval`},
		{"status code", Settings{RetryPolicy: &RetryPolicy{RetriableStatusCodes: []int{503, 99}}},
			`upstreams[2].retry_policy.retriable_status_codes[1]: 99 is not an HTTP status code`},
		{"panic", Settings{HealthyPanicThreshold: new(101.0)}, `upstreams[2].healthy_panic_threshold: 101 must be a percentage in 0..100`},
		{"hash", Settings{HashPolicy: []HashPolicy{{Header: "x", SourceIP: true}}}, `upstreams[2].hash_policy[0]: set exactly one of header, source_ip`},
		{"failover empty", Settings{Failover: &Failover{}}, `upstreams[2].failover.datacenters: must list at least one datacenter`},
		{"failover dc name", Settings{Failover: &Failover{Datacenters: []string{"dc2", "dc 3"}}},
			`upstreams[2].failover.datacenters[1]: "dc 3" is not a datacenter name (letters, digits, - and _)`},
		{"failover dc repeated", Settings{Failover: &Failover{Datacenters: []string{"dc2", "dc2"}}},
			`upstreams[2].failover.datacenters[1]: "dc2" repeats upstreams[2].failover.datacenters[0]`},
		{"zone min size", Settings{ZoneAwareMinClusterSize: new(-1)}, `upstreams[2].zone_aware_min_cluster_size: -1 must be >= 0`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.s.Validate("upstreams[2]")
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Validate = %v\nwant %s", err, tt.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("%v does not match ErrInvalid", err)
			}
		})
	}
	// Sections keep their own packages' errors, with the full key path.
	err := (&Settings{OutlierDetection: &outlier.Config{MaxEjectionPercent: new(uint32(101))}}).Validate("upstreams[0]")
	if !errors.Is(err, outlier.ErrInvalidConfig) || !strings.Contains(err.Error(), "upstreams[0].outlier_detection.max_ejection_percent: 101") {
		t.Errorf("outlier: %v", err)
	}
	// Unset keys stand for their defaults: the zero value is valid, and so
	// is everything SetDefaults fills.
	var s Settings
	if err := s.Validate("u"); err != nil {
		t.Errorf("zero settings: %v", err)
	}
	s.SetDefaults()
	if err := s.Validate("u"); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

func TestSetDefaults(t *testing.T) {
	var s Settings
	s.SetDefaults()
	if s.LBPolicy != balancer.RoundRobin || s.ConnectTimeout != 5*time.Second || *s.Timeout != 15*time.Second ||
		s.IdleTimeout != time.Hour || *s.TCPIdleTimeout != time.Hour || *s.HealthyPanicThreshold != 50 ||
		s.MaxIdleConnsPerHost != 256 || s.HealthCheck != nil || s.SlowStart != nil {
		t.Errorf("defaults: %+v", s)
	}
	if rp := s.RetryPolicy; rp.RetryOn != DefaultRetryOn || *rp.NumRetries != 2 || rp.RetryBackOff.MaxInterval != 250*time.Millisecond {
		t.Errorf("retry policy defaults: %+v", rp)
	}
	if *s.OutlierDetection.Consecutive5xx != outlier.DefaultConsecutive5xx || *s.CircuitBreakers.MaxRequests != breaker.DefaultMaxRequests {
		t.Errorf("section defaults not filled")
	}
	// 0 where 0 means something is kept.
	s = Settings{TCPIdleTimeout: new(time.Duration(0)), Timeout: new(time.Duration(0)), HealthyPanicThreshold: new(0.0)}
	s.SetDefaults()
	if *s.TCPIdleTimeout != 0 || *s.Timeout != 0 || *s.HealthyPanicThreshold != 0 {
		t.Errorf("explicit zeros overwritten: %v %v %v", *s.TCPIdleTimeout, *s.Timeout, *s.HealthyPanicThreshold)
	}
}

func TestRetryOnTable(t *testing.T) {
	seen := RetryOn(0)
	for _, name := range strings.Split(RetryOnList(), ", ") {
		b, ok := ParseRetryOn(name)
		if !ok || b == 0 || seen&b != 0 {
			t.Errorf("%q: bit %b ok %v (seen %b)", name, b, ok, seen)
		}
		seen |= b
	}
	if got := RetryConditions(" internal ,5xx,bogus"); got != RetryOnInternal|RetryOn5xx {
		t.Errorf("RetryConditions = %b", got)
	}
	if !strings.HasSuffix(RetryOnList(), ", internal") {
		t.Errorf("RetryOnList() = %q lacks internal", RetryOnList())
	}
}

func TestMerge(t *testing.T) {
	var local Settings
	local.SetDefaults()
	local.ConnectTimeout = 2 * time.Second
	local.LB.RingHash.MinimumRingSize = 4
	remote := Settings{
		LBPolicy:              balancer.Maglev,
		ConnectTimeout:        9 * time.Second,
		LB:                    balancer.Config{RingHash: balancer.RingHashConfig{MinimumRingSize: 64}, Maglev: balancer.MaglevConfig{TableSize: 7}},
		HealthyPanicThreshold: new(0.0),
		CircuitBreakers:       &breaker.Config{MaxRequests: new(uint32(3))},
	}
	set := map[string]bool{"connect_timeout": true, "ring_hash_lb_config": true}
	got := Merge(local, remote, func(k string) bool { return set[k] })
	want := local
	want.LBPolicy = balancer.Maglev
	want.LB.Maglev.TableSize = 7
	want.HealthyPanicThreshold = remote.HealthyPanicThreshold
	want.CircuitBreakers = remote.CircuitBreakers
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Merge:\n got %+v\nwant %+v", got, want)
	}
	// Nothing set locally: every key the remote carries wins, the rest
	// (route settings CDS does not carry) stay.
	got = Merge(local, remote, nil)
	if got.ConnectTimeout != 9*time.Second || got.LB.RingHash.MinimumRingSize != 64 || got.RetryPolicy != local.RetryPolicy {
		t.Errorf("Merge without file keys: %+v", got)
	}
}
