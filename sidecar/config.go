package sidecar

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/discovery/consul"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/health"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
	"github.com/sidemesh/sidemesh/tracing"
	"github.com/sidemesh/sidemesh/xds"
)

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("config")

// Config is the whole sidecar configuration file (DESIGN.md "Config").
type Config struct {
	Node        string          `yaml:"node"`
	Admin       string          `yaml:"admin"`
	Service     *Service        `yaml:"service"`
	Discovery   Discovery       `yaml:"discovery"`
	XDSServer   *XDSServer      `yaml:"xds_server"`
	Transparent *Transparent    `yaml:"transparent"`
	Upstreams   []Upstream      `yaml:"upstreams"`
	Tracing     *tracing.Config `yaml:"tracing"`
	Drain       *DrainConfig    `yaml:"drain"`
	LogLevel    string          `yaml:"log_level"`
	source      string          // file name, for messages
}

// Service is the local app (the inbound side).
type Service struct {
	Name        string         `yaml:"name"`
	Port        int            `yaml:"port"`
	Inbound     string         `yaml:"inbound"`
	Protocol    string         `yaml:"protocol"`
	Weight      int            `yaml:"weight"`
	Tags        []string       `yaml:"tags"`
	HealthCheck *health.Config `yaml:"health_check"`
	Timeout     time.Duration  `yaml:"timeout"`
}

// Discovery selects exactly one source.
type Discovery struct {
	Consul *consul.Config    `yaml:"consul"`
	XDS    *xds.ClientConfig `yaml:"xds"`
	File   string            `yaml:"file"`
}

// XDSServer embeds the xDS server.
type XDSServer struct {
	Listen string `yaml:"listen"`
}

// Transparent is the iptables-redirected outbound listener.
type Transparent struct {
	Listen string `yaml:"listen"`
}

// DrainConfig controls graceful shutdown.
type DrainConfig struct {
	// Timeout bounds how long outbound listeners keep serving after
	// SIGTERM while in-flight requests finish (Istio's
	// terminationDrainDuration, default 5s).
	Timeout time.Duration `yaml:"timeout"`
}

// Upstream is one upstream service with its outbound listener.
type Upstream struct {
	Service               string           `yaml:"service"`
	Listen                string           `yaml:"listen"`
	Protocol              string           `yaml:"protocol"`
	LBPolicy              string           `yaml:"lb_policy"`
	LB                    balancer.Config  `yaml:",inline"`
	HashPolicy            []HashPolicy     `yaml:"hash_policy"`
	ConnectTimeout        time.Duration    `yaml:"connect_timeout"`
	Timeout               *time.Duration   `yaml:"timeout"`
	IdleTimeout           time.Duration    `yaml:"idle_timeout"`
	TCPIdleTimeout        *time.Duration   `yaml:"tcp_idle_timeout"`
	RetryPolicy           *RetryPolicy     `yaml:"retry_policy"`
	OutlierDetection      *outlier.Config  `yaml:"outlier_detection"`
	CircuitBreakers       *breaker.Config  `yaml:"circuit_breakers"`
	HealthCheck           *health.Config   `yaml:"health_check"`
	HealthyPanicThreshold *float64         `yaml:"healthy_panic_threshold"`
	SlowStart             *SlowStartConfig `yaml:"slow_start"`
	MaxIdleConnsPerHost   int              `yaml:"max_idle_connections_per_endpoint"`
	set                   map[string]bool  // keys present in the file (xDS: local keys win)
	noOutlier             bool             // inbound: never eject the local app
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

// Defaults (DESIGN.md; Envoy's where DESIGN is silent).
const (
	DefaultAdmin          = "127.0.0.1:15000"
	DefaultConnectTimeout = 5 * time.Second
	DefaultTimeout        = 15 * time.Second
	DefaultIdleTimeout    = time.Hour // Envoy's common_http_protocol_options.idle_timeout
	DefaultTCPIdleTimeout = time.Hour // Envoy's tcp_proxy idle_timeout
	DefaultPanicThreshold = 50.0
	DefaultRetryBase      = 25 * time.Millisecond
	DefaultMaxBuffer      = 64 << 10
	DefaultDrainTimeout   = 5 * time.Second
	DefaultIdlePerHost    = 256
)

// SetDefaults fills every key left out with its default.
func (c *Config) SetDefaults() {
	if c.Admin == "" {
		c.Admin = DefaultAdmin
	}
	if c.Node == "" {
		if h, err := os.Hostname(); err == nil {
			c.Node = h
		}
	}
	if c.Service != nil {
		s := c.Service
		if s.Protocol == "" {
			s.Protocol = "http"
		}
		if s.Weight == 0 {
			s.Weight = 1
		}
		if s.Timeout == 0 {
			s.Timeout = DefaultTimeout
		}
		if s.HealthCheck != nil {
			s.HealthCheck.SetDefaults()
		}
	}
	if c.Discovery.Consul != nil {
		c.Discovery.Consul.SetDefaults()
	}
	if c.Tracing != nil {
		c.Tracing.SetDefaults()
	}
	if c.Drain == nil {
		c.Drain = &DrainConfig{}
	}
	if c.Drain.Timeout == 0 {
		c.Drain.Timeout = DefaultDrainTimeout
	}
	for i := range c.Upstreams {
		c.Upstreams[i].SetDefaults()
	}
}

// SetDefaults fills an upstream's defaults (DESIGN.md, then Envoy's).
func (u *Upstream) SetDefaults() {
	if u.Protocol == "" {
		u.Protocol = "http"
	}
	if u.LBPolicy == "" {
		u.LBPolicy = balancer.RoundRobin
	}
	u.LB.SetDefaults()
	if u.ConnectTimeout == 0 {
		u.ConnectTimeout = DefaultConnectTimeout
	}
	if u.Timeout == nil {
		d := DefaultTimeout
		u.Timeout = &d
	}
	if u.IdleTimeout == 0 {
		u.IdleTimeout = DefaultIdleTimeout
	}
	if u.TCPIdleTimeout == nil {
		d := DefaultTCPIdleTimeout
		u.TCPIdleTimeout = &d
	}
	if u.RetryPolicy == nil {
		// Istio's default: retry only where the request never reached the app.
		two := 2
		u.RetryPolicy = &RetryPolicy{RetryOn: "connect-failure,refused-stream", NumRetries: &two}
	}
	rp := u.RetryPolicy
	if rp.NumRetries == nil {
		one := 1 // Envoy's default
		rp.NumRetries = &one
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
	if u.OutlierDetection == nil {
		u.OutlierDetection = &outlier.Config{}
	}
	u.OutlierDetection.SetDefaults()
	if u.CircuitBreakers == nil {
		u.CircuitBreakers = &breaker.Config{}
	}
	u.CircuitBreakers.SetDefaults()
	if u.HealthCheck != nil {
		u.HealthCheck.SetDefaults()
	}
	if u.HealthyPanicThreshold == nil {
		p := DefaultPanicThreshold
		u.HealthyPanicThreshold = &p
	}
	if u.SlowStart != nil {
		if u.SlowStart.Aggression == 0 {
			u.SlowStart.Aggression = 1.0
		}
		if u.SlowStart.MinWeightPercent == 0 {
			u.SlowStart.MinWeightPercent = 10
		}
	}
	if u.MaxIdleConnsPerHost == 0 {
		u.MaxIdleConnsPerHost = DefaultIdlePerHost
	}
}

func bad(key string, value any, why string) error {
	return fmt.Errorf("%w: %s: %s %s", ErrConfig, key, quote(value), why)
}

func quote(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("%q", v)
	case time.Duration:
		return fmt.Sprintf("%q", v.String())
	}
	return fmt.Sprint(v)
}

func validAddr(key, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return bad(key, addr, "is not host:port")
	}
	_ = host
	return nil
}

var protocols = map[string]bool{"http": true, "grpc": true, "tcp": true}

// Validate checks the whole config; errors name key and value.
func (c *Config) Validate() error {
	if err := validAddr("admin", c.Admin); err != nil {
		return err
	}
	n := 0
	if c.Discovery.Consul != nil {
		n++
		if err := c.Discovery.Consul.Validate("discovery.consul"); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	if c.Discovery.XDS != nil {
		n++
		if err := c.Discovery.XDS.Validate("discovery.xds"); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	if c.Discovery.File != "" {
		n++
	}
	if n > 1 {
		return fmt.Errorf("%w: discovery: set exactly one of consul, xds, file (found %d)", ErrConfig, n)
	}
	if n == 0 && len(c.Upstreams) > 0 {
		return fmt.Errorf("%w: discovery: upstreams need a source: set one of consul, xds, file", ErrConfig)
	}
	if s := c.Service; s != nil {
		if s.Name == "" {
			return bad("service.name", s.Name, "must not be empty")
		}
		if s.Port < 1 || s.Port > 65535 {
			return bad("service.port", s.Port, "must be a port in 1..65535")
		}
		if s.Inbound != "" {
			if err := validAddr("service.inbound", s.Inbound); err != nil {
				return err
			}
		}
		if !protocols[s.Protocol] {
			return bad("service.protocol", s.Protocol, "must be one of http, grpc, tcp")
		}
		if s.Weight < 1 || s.Weight > 128 {
			return bad("service.weight", s.Weight, "must be in 1..128 (Consul's range)")
		}
		if s.HealthCheck != nil {
			if err := s.HealthCheck.Validate("service.health_check"); err != nil {
				return fmt.Errorf("%w: %w", ErrConfig, err)
			}
		}
	}
	if c.XDSServer != nil {
		if err := validAddr("xds_server.listen", c.XDSServer.Listen); err != nil {
			return err
		}
	}
	if c.Transparent != nil {
		if err := validAddr("transparent.listen", c.Transparent.Listen); err != nil {
			return err
		}
	}
	if c.Tracing != nil {
		if err := c.Tracing.Validate("tracing"); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	switch strings.ToLower(c.LogLevel) {
	case "", "debug", "info", "warn", "error":
	default:
		return bad("log_level", c.LogLevel, "must be one of debug, info, warn, error")
	}
	if c.Drain.Timeout < 0 {
		return bad("drain.timeout", c.Drain.Timeout, "must be >= 0")
	}
	seenSvc := map[string]int{}
	seenListen := map[string]string{c.Admin: "admin"}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		p := fmt.Sprintf("upstreams[%d]", i)
		if err := u.Validate(p); err != nil {
			return err
		}
		if j, dup := seenSvc[u.Service]; dup {
			return bad(p+".service", u.Service, fmt.Sprintf("repeats upstreams[%d].service", j))
		}
		seenSvc[u.Service] = i
		if u.Listen != "" && !strings.HasSuffix(u.Listen, ":0") {
			if other, dup := seenListen[u.Listen]; dup {
				return bad(p+".listen", u.Listen, "is already used by "+other)
			}
			seenListen[u.Listen] = p + ".listen"
		}
	}
	return nil
}

var retryOnKnown = map[string]bool{
	"5xx": true, "gateway-error": true, "reset": true, "connect-failure": true,
	"retriable-4xx": true, "refused-stream": true, "retriable-status-codes": true,
	"cancelled": true, "deadline-exceeded": true, "unavailable": true, "resource-exhausted": true,
	"internal": true,
}

// Validate checks one upstream; p is its key path.
func (u *Upstream) Validate(p string) error {
	if u.Service == "" {
		return bad(p+".service", u.Service, "must not be empty")
	}
	if u.Listen != "" {
		if err := validAddr(p+".listen", u.Listen); err != nil {
			return err
		}
	}
	if !protocols[u.Protocol] {
		return bad(p+".protocol", u.Protocol, "must be one of http, grpc, tcp")
	}
	if !balancer.ValidPolicy(u.LBPolicy) {
		return bad(p+".lb_policy", u.LBPolicy, "must be one of weighted_random, round_robin, least_request, ring_hash, maglev")
	}
	if err := u.LB.Validate(p); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	for i, h := range u.HashPolicy {
		hp := fmt.Sprintf("%s.hash_policy[%d]", p, i)
		if (h.Header == "") == !h.SourceIP {
			return fmt.Errorf("%w: %s: set exactly one of header, source_ip", ErrConfig, hp)
		}
	}
	if u.ConnectTimeout <= 0 {
		return bad(p+".connect_timeout", u.ConnectTimeout, "must be > 0")
	}
	if *u.Timeout < 0 {
		return bad(p+".timeout", *u.Timeout, "must be >= 0 (0 disables it)")
	}
	if *u.TCPIdleTimeout < 0 {
		return bad(p+".tcp_idle_timeout", *u.TCPIdleTimeout, "must be >= 0 (0 disables it)")
	}
	if u.IdleTimeout < 0 {
		return bad(p+".idle_timeout", u.IdleTimeout, "must be > 0")
	}
	rp := u.RetryPolicy
	for _, on := range strings.Split(rp.RetryOn, ",") {
		on = strings.TrimSpace(on)
		if on == "" {
			continue
		}
		if !retryOnKnown[on] {
			return bad(p+".retry_policy.retry_on", on, "is not a retry condition (5xx, gateway-error, reset, connect-failure, retriable-4xx, refused-stream, retriable-status-codes, cancelled, deadline-exceeded, unavailable, resource-exhausted)")
		}
	}
	if *rp.NumRetries < 0 || *rp.NumRetries > 10 {
		return bad(p+".retry_policy.num_retries", *rp.NumRetries, "must be in 0..10")
	}
	if rp.PerTryTimeout < 0 {
		return bad(p+".retry_policy.per_try_timeout", rp.PerTryTimeout, "must be >= 0")
	}
	for i, code := range rp.RetriableStatusCodes {
		if code < 100 || code > 599 {
			return bad(fmt.Sprintf("%s.retry_policy.retriable_status_codes[%d]", p, i), code, "is not an HTTP status code")
		}
	}
	if rp.RetryBackOff.BaseInterval < 0 {
		return bad(p+".retry_policy.retry_back_off.base_interval", rp.RetryBackOff.BaseInterval, "must be > 0")
	}
	if rp.RetryBackOff.MaxInterval < rp.RetryBackOff.BaseInterval {
		return bad(p+".retry_policy.retry_back_off.max_interval", rp.RetryBackOff.MaxInterval, "must be >= base_interval")
	}
	if rp.MaxBufferBytes < 0 {
		return bad(p+".retry_policy.max_buffer_bytes", rp.MaxBufferBytes, "must be >= 0")
	}
	if err := u.OutlierDetection.Validate(p + ".outlier_detection"); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := u.CircuitBreakers.Validate(p + ".circuit_breakers"); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if u.HealthCheck != nil {
		if err := u.HealthCheck.Validate(p + ".health_check"); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	if t := *u.HealthyPanicThreshold; t < 0 || t > 100 {
		return bad(p+".healthy_panic_threshold", t, "must be a percentage in 0..100")
	}
	if s := u.SlowStart; s != nil {
		if s.Window <= 0 {
			return bad(p+".slow_start.slow_start_window", s.Window, "must be > 0")
		}
		if s.Aggression <= 0 {
			return bad(p+".slow_start.aggression", s.Aggression, "must be > 0")
		}
		if s.MinWeightPercent <= 0 || s.MinWeightPercent > 100 {
			return bad(p+".slow_start.min_weight_percent", s.MinWeightPercent, "must be in (0, 100]")
		}
	}
	if u.MaxIdleConnsPerHost < 0 {
		return bad(p+".max_idle_connections_per_endpoint", u.MaxIdleConnsPerHost, "must be >= 0")
	}
	return nil
}
