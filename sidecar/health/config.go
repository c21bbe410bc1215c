package health

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ErrInvalidConfig is wrapped by every error Config.Validate returns.
var ErrInvalidConfig = errors.New("health: invalid config")

// Defaults. Envoy requires interval, timeout and both thresholds
// (envoy.config.core.v3.HealthCheck marks them required); we fill them in
// instead, with the values below, so that `health_check: {http: /healthz}` is
// a complete configuration. no_traffic_interval is Envoy's own default.
const (
	DefaultInterval           = 5 * time.Second
	DefaultTimeout            = 1 * time.Second
	DefaultUnhealthyThreshold = 3
	DefaultHealthyThreshold   = 2
	DefaultNoTrafficInterval  = 60 * time.Second
)

// Config is an active health check for the endpoints of one cluster
// (envoy.config.core.v3.HealthCheck). Exactly one of HTTP, TCP and GRPC is
// set. Zero durations and thresholds mean "use the default" (SetDefaults).
//
//	health_check: {http: /healthz, interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2}
//	health_check: {http: {path: /healthz, host: api.internal, expected_statuses: [{start: 200, end: 400}]}}
//	health_check: {tcp: {}}                                   # connect only
//	health_check: {tcp: {send: "PING\r\n", expect: "PONG"}}
//	health_check: {grpc: {service_name: api.v1.Api}}
type Config struct {
	HTTP *HTTPCheck `yaml:"http,omitempty" json:"http,omitempty"`
	TCP  *TCPCheck  `yaml:"tcp,omitempty" json:"tcp,omitempty"`
	GRPC *GRPCCheck `yaml:"grpc,omitempty" json:"grpc,omitempty"`

	// Interval between the end of one check and the start of the next.
	Interval time.Duration `yaml:"interval,omitempty" json:"interval,omitempty"`
	// Timeout bounds one check: connect, request and response. It may be
	// longer than Interval (Envoy allows it; checks never overlap).
	Timeout time.Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	// UnhealthyThreshold failures in a row that mark a healthy host
	// unhealthy. Only failures that do not say "I am unhealthy" count: a
	// connect error, a timeout, a reset, an HTTP status listed in
	// retriable_statuses. An answer that says so (an HTTP status outside
	// expected_statuses, a gRPC NOT_SERVING) marks the host unhealthy at
	// once, as in Envoy.
	UnhealthyThreshold int `yaml:"unhealthy_threshold,omitempty" json:"unhealthy_threshold,omitempty"`
	// HealthyThreshold successes in a row that mark an unhealthy host
	// healthy again. A host's very first check needs only one success.
	HealthyThreshold int `yaml:"healthy_threshold,omitempty" json:"healthy_threshold,omitempty"`
	// IntervalJitter adds a random [0, interval_jitter) to every wait.
	IntervalJitter time.Duration `yaml:"interval_jitter,omitempty" json:"interval_jitter,omitempty"`
	// IntervalJitterPercent adds a random [0, interval*percent/100) to every
	// wait; it adds to IntervalJitter when both are set.
	IntervalJitterPercent int `yaml:"interval_jitter_percent,omitempty" json:"interval_jitter_percent,omitempty"`
	// InitialJitter delays a host's first check by a random [0, initial_jitter).
	InitialJitter time.Duration `yaml:"initial_jitter,omitempty" json:"initial_jitter,omitempty"`
	// NoTrafficInterval replaces Interval while the cluster has seen no
	// traffic (Options.Traffic reports false).
	NoTrafficInterval time.Duration `yaml:"no_traffic_interval,omitempty" json:"no_traffic_interval,omitempty"`
}

// HTTPCheck is an HTTP/1.1 GET health check
// (envoy.config.core.v3.HealthCheck.HttpHealthCheck). In YAML it is either
// the path alone (`http: /healthz`) or a mapping with the keys path, host,
// expected_statuses and retriable_statuses.
type HTTPCheck struct {
	// Path is requested on each check; it starts with '/' and may carry a
	// query.
	Path string `yaml:"path" json:"path"`
	// Host is the Host header; empty means Options.ServiceName (Envoy uses
	// the cluster name), or the endpoint address when that is empty too.
	Host string `yaml:"host,omitempty" json:"host,omitempty"`
	// ExpectedStatuses are the statuses that pass, as half-open ranges
	// [start, end) within [100, 600). Empty means 200 only (Envoy's default).
	ExpectedStatuses []StatusRange `yaml:"expected_statuses,omitempty" json:"expected_statuses,omitempty"`
	// RetriableStatuses are failing statuses that count towards
	// unhealthy_threshold instead of marking the host unhealthy at once.
	// ExpectedStatuses wins where the two overlap.
	RetriableStatuses []StatusRange `yaml:"retriable_statuses,omitempty" json:"retriable_statuses,omitempty"`
}

// StatusRange is the half-open range [Start, End) of HTTP statuses
// (envoy.type.v3.Int64Range).
type StatusRange struct {
	Start int `yaml:"start" json:"start"`
	End   int `yaml:"end" json:"end"`
}

// TCPCheck connects, optionally writes Send and optionally reads until
// Expect has been seen (envoy.config.core.v3.HealthCheck.TcpHealthCheck).
// `tcp: {}` is a connect-only check. Unlike Envoy, whose payloads are hex,
// Send and Expect are the bytes themselves (YAML double-quoted strings take
// "\r\n" and "\x00" escapes).
type TCPCheck struct {
	Send   string `yaml:"send,omitempty" json:"send,omitempty"`
	Expect string `yaml:"expect,omitempty" json:"expect,omitempty"`
}

// GRPCCheck calls grpc.health.v1.Health/Check over plaintext HTTP/2 and
// passes when the answer is SERVING
// (envoy.config.core.v3.HealthCheck.GrpcHealthCheck).
type GRPCCheck struct {
	// ServiceName is sent in HealthCheckRequest.service; empty asks about
	// the server as a whole.
	ServiceName string `yaml:"service_name,omitempty" json:"service_name,omitempty"`
	// Authority is the :authority header; empty means Options.ServiceName,
	// or the endpoint address when that is empty too.
	Authority string `yaml:"authority,omitempty" json:"authority,omitempty"`
}

// UnmarshalYAML accepts a bare path or a mapping; unknown keys in the
// mapping are errors (yaml.v3 does not pass KnownFields down to custom
// unmarshalers, so the keys are checked here).
func (h *HTTPCheck) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		var p string
		if err := n.Decode(&p); err != nil {
			return err
		}
		*h = HTTPCheck{Path: p}
		return nil
	case yaml.MappingNode:
		known := map[string]bool{"path": true, "host": true, "expected_statuses": true, "retriable_statuses": true}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if !known[k.Value] {
				return fmt.Errorf("line %d: field %s not found in type health.HTTPCheck", k.Line, k.Value)
			}
			if k.Value == "expected_statuses" || k.Value == "retriable_statuses" {
				if err := checkRangeKeys(n.Content[i+1]); err != nil {
					return err
				}
			}
		}
		type plain HTTPCheck // no UnmarshalYAML: no recursion
		var p plain
		if err := n.Decode(&p); err != nil {
			return err
		}
		*h = HTTPCheck(p)
		return nil
	}
	return fmt.Errorf("line %d: http must be a path or a mapping", n.Line)
}

func checkRangeKeys(seq *yaml.Node) error {
	if seq.Kind != yaml.SequenceNode {
		return nil // Decode reports the type error
	}
	for _, r := range seq.Content {
		if r.Kind != yaml.MappingNode {
			continue
		}
		for i := 0; i+1 < len(r.Content); i += 2 {
			if k := r.Content[i]; k.Value != "start" && k.Value != "end" {
				return fmt.Errorf("line %d: field %s not found in type health.StatusRange", k.Line, k.Value)
			}
		}
	}
	return nil
}

// MarshalYAML writes the short form when only the path is set.
func (h HTTPCheck) MarshalYAML() (any, error) {
	if h.Host == "" && len(h.ExpectedStatuses) == 0 && len(h.RetriableStatuses) == 0 {
		return h.Path, nil
	}
	type plain HTTPCheck
	return plain(h), nil
}

// SetDefaults fills zero durations and thresholds with the defaults above.
func (c *Config) SetDefaults() {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.UnhealthyThreshold == 0 {
		c.UnhealthyThreshold = DefaultUnhealthyThreshold
	}
	if c.HealthyThreshold == 0 {
		c.HealthyThreshold = DefaultHealthyThreshold
	}
	if c.NoTrafficInterval == 0 {
		c.NoTrafficInterval = DefaultNoTrafficInterval
	}
}

// Validate checks a config after SetDefaults. path is the key path of the
// config itself (e.g. "upstreams[0].health_check"); errors name the key and
// the bad value and wrap ErrInvalidConfig.
func (c *Config) Validate(path string) error {
	kinds := make([]string, 0, 3)
	if c.HTTP != nil {
		kinds = append(kinds, "http")
	}
	if c.TCP != nil {
		kinds = append(kinds, "tcp")
	}
	if c.GRPC != nil {
		kinds = append(kinds, "grpc")
	}
	switch len(kinds) {
	case 0:
		return fmt.Errorf("%w: %s: exactly one of http, tcp, grpc must be set, got none", ErrInvalidConfig, path)
	case 1:
	default:
		return fmt.Errorf("%w: %s: exactly one of http, tcp, grpc must be set, got %s", ErrInvalidConfig, path, strings.Join(kinds, " and "))
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"interval", c.Interval},
		{"timeout", c.Timeout},
		{"no_traffic_interval", c.NoTrafficInterval},
	} {
		if d.v <= 0 {
			return fmt.Errorf("%w: %s.%s: %q must be > 0", ErrInvalidConfig, path, d.key, d.v)
		}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"interval_jitter", c.IntervalJitter},
		{"initial_jitter", c.InitialJitter},
	} {
		if d.v < 0 {
			return fmt.Errorf("%w: %s.%s: %q must be >= 0", ErrInvalidConfig, path, d.key, d.v)
		}
	}
	if c.UnhealthyThreshold < 1 {
		return fmt.Errorf("%w: %s.unhealthy_threshold: %d must be >= 1", ErrInvalidConfig, path, c.UnhealthyThreshold)
	}
	if c.HealthyThreshold < 1 {
		return fmt.Errorf("%w: %s.healthy_threshold: %d must be >= 1", ErrInvalidConfig, path, c.HealthyThreshold)
	}
	if c.IntervalJitterPercent < 0 || c.IntervalJitterPercent > 100 {
		return fmt.Errorf("%w: %s.interval_jitter_percent: %d must be in 0..100", ErrInvalidConfig, path, c.IntervalJitterPercent)
	}
	if h := c.HTTP; h != nil {
		if !strings.HasPrefix(h.Path, "/") {
			return fmt.Errorf("%w: %s.http.path: %q must start with '/'", ErrInvalidConfig, path, h.Path)
		}
		if strings.ContainsAny(h.Path, " \t\r\n#") {
			return fmt.Errorf("%w: %s.http.path: %q must not contain whitespace or '#'", ErrInvalidConfig, path, h.Path)
		}
		if strings.ContainsAny(h.Host, " \t\r\n/") {
			return fmt.Errorf("%w: %s.http.host: %q must not contain whitespace or '/'", ErrInvalidConfig, path, h.Host)
		}
		if err := validateRanges(path+".http.expected_statuses", h.ExpectedStatuses); err != nil {
			return err
		}
		if err := validateRanges(path+".http.retriable_statuses", h.RetriableStatuses); err != nil {
			return err
		}
	}
	if g := c.GRPC; g != nil && strings.ContainsAny(g.Authority, " \t\r\n/") {
		return fmt.Errorf("%w: %s.grpc.authority: %q must not contain whitespace or '/'", ErrInvalidConfig, path, g.Authority)
	}
	if t := c.TCP; t != nil && t.Expect != "" && len(t.Expect) > maxTCPExpect {
		return fmt.Errorf("%w: %s.tcp.expect: %d bytes, must be at most %d", ErrInvalidConfig, path, len(t.Expect), maxTCPExpect)
	}
	return nil
}

func validateRanges(path string, rs []StatusRange) error {
	for i, r := range rs {
		if r.Start < 100 || r.End > 600 || r.Start >= r.End {
			return fmt.Errorf("%w: %s[%d]: [%d, %d) must satisfy 100 <= start < end <= 600",
				ErrInvalidConfig, path, i, r.Start, r.End)
		}
	}
	return nil
}

// maxTCPExpect bounds how much a TCP check reads while looking for Expect.
const maxTCPExpect = 64 << 10

// inRanges reports whether code lies in one of rs.
func inRanges(code int, rs []StatusRange) bool {
	for _, r := range rs {
		if code >= r.Start && code < r.End {
			return true
		}
	}
	return false
}

// String is the check's kind and target, for logs.
func (c *Config) String() string {
	switch {
	case c.HTTP != nil:
		return "http " + strconv.Quote(c.HTTP.Path)
	case c.TCP != nil:
		return "tcp"
	case c.GRPC != nil:
		return "grpc " + strconv.Quote(c.GRPC.ServiceName)
	}
	return "none"
}
