package sidecar

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sidemesh/sidemesh/discovery/consul"
	"github.com/sidemesh/sidemesh/internal/confyaml"
	"github.com/sidemesh/sidemesh/mtls"
	"github.com/sidemesh/sidemesh/sidecar/health"
	"github.com/sidemesh/sidemesh/tracing"
	"github.com/sidemesh/sidemesh/upstream"
	"github.com/sidemesh/sidemesh/xds"
)

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("config")

// Config is the whole sidecar configuration file (README "Config reference").
type Config struct {
	Node        string           `yaml:"node"`
	Admin       AdminConfig      `yaml:"admin"`
	Probe       string           `yaml:"probe"`
	Service     *Service         `yaml:"service"`
	Discovery   Discovery        `yaml:"discovery"`
	XDSServer   *XDSServer       `yaml:"xds_server"`
	Transparent *Transparent     `yaml:"transparent"`
	Upstreams   []Upstream       `yaml:"upstreams"`
	Tracing     *tracing.Config  `yaml:"tracing"`
	Drain       *DrainConfig     `yaml:"drain"`
	MTLS        *MTLSConfig      `yaml:"mtls"`
	LogLevel    string           `yaml:"log_level"`
	AccessLog   *AccessLogConfig `yaml:"access_log"`
	Metrics     MetricsConfig    `yaml:"metrics"`
	Limits      *LimitsConfig    `yaml:"limits"`
	// Defaults (only in `sidemesh xds -c`) are the upstream settings of
	// every served service; upstreams[] entries override them.
	Defaults *upstream.Settings `yaml:"defaults"`
	// Zone is the sidecar's own zone, for zone-aware routing (with Consul
	// discovery, the agent's node meta "zone" when left out).
	Zone   string `yaml:"zone"`
	source string // file name, for messages
}

// AdminConfig is `admin`: a plain "host:port" or {address, pprof}.
type AdminConfig struct {
	Address string `yaml:"address"`
	// Pprof serves /debug/pprof/ on admin.
	Pprof bool `yaml:"pprof"`
	long  bool // written as a mapping: errors name admin.address
}

// UnmarshalYAML takes the plain string form ("127.0.0.1:15000") or the
// mapping form, refusing unknown keys like every other key.
func (a *AdminConfig) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		return n.Decode(&a.Address)
	}
	if n.Kind != yaml.MappingNode {
		return &confyaml.Error{Path: "admin", Line: n.Line, Problem: "must be host:port or {address, pprof}"}
	}
	a.long = true
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		var err error
		switch k.Value {
		case "address":
			err = v.Decode(&a.Address)
		case "pprof":
			err = v.Decode(&a.Pprof)
		default:
			return &confyaml.Error{Path: "admin." + k.Value, Line: k.Line, Problem: "unknown key"}
		}
		if err != nil {
			return &confyaml.Error{Path: "admin." + k.Value, Line: v.Line, Problem: fmt.Sprintf("%q is not a valid %s", v.Value, k.Value)}
		}
	}
	return nil
}

// Service is the local app (the inbound side).
type Service struct {
	Name    string `yaml:"name"`
	Port    int    `yaml:"port"`
	Inbound string `yaml:"inbound"`
	// Address is registered in Consul as Service.Address: the IP other
	// hosts reach this instance at. Empty: the inbound listener's IP when
	// it is a specific one, else detected (consul.DetectAddress).
	Address string `yaml:"address"`
	// DeregisterCriticalAfter lets Consul reap the entry of an instance
	// whose check stayed critical that long (a crashed pod); 0 never.
	DeregisterCriticalAfter *time.Duration `yaml:"deregister_critical_after"`
	Protocol                string         `yaml:"protocol"`
	Weight                  int            `yaml:"weight"`
	Tags                    []string       `yaml:"tags"`
	HealthCheck             *health.Config `yaml:"health_check"`
	Timeout                 time.Duration  `yaml:"timeout"`
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
	// TLS makes the xDS server serve TLS and require client certificates
	// signed by its ca_file (only mesh members read the stream).
	TLS *XDSServerTLS `yaml:"tls"`
	// Debounce coalesces source changes into one push (default 50ms).
	Debounce *time.Duration `yaml:"debounce"`
}

// DefaultXDSDebounce is xds_server.debounce's default.
const DefaultXDSDebounce = 50 * time.Millisecond

// MetricsConfig shapes /metrics.
type MetricsConfig struct {
	// PerEndpoint adds the endpoint label to sidemesh_upstream_rq_total
	// (one series per endpoint and class); off, the series are per
	// upstream and per-endpoint counters are on /clusters only.
	PerEndpoint bool `yaml:"per_endpoint"`
}

// Transparent is the iptables-redirected outbound listener.
type Transparent struct {
	Listen string `yaml:"listen"`
}

// DrainConfig controls graceful shutdown (SIGTERM, SIGINT,
// POST /quitquitquit).
type DrainConfig struct {
	// Timeout bounds the whole drain: the process exits then at the latest
	// (Istio's terminationDrainDuration).
	Timeout time.Duration `yaml:"timeout"`
	// InboundGrace is how long the inbound listener keeps serving, with
	// Connection: close (HTTP/1) and GOAWAY (HTTP/2), while consumers learn
	// that this instance is going away.
	InboundGrace *time.Duration `yaml:"inbound_grace"`
	// QuietPeriod: once the inbound listener has closed, the drain ends
	// when the outbound listeners have been idle this long (the app is
	// done with its calls).
	QuietPeriod *time.Duration `yaml:"quiet_period"`
}

// Upstream is one upstream service with its outbound listener: its name,
// listener and protocol, and its settings (package upstream, inline: the
// keys sit beside service, listen and protocol).
type Upstream struct {
	Service           string `yaml:"service"`
	Listen            string `yaml:"listen"`
	Protocol          string `yaml:"protocol"`
	upstream.Settings `yaml:",inline"`
	set               map[string]bool // keys present in the file (xDS: local keys win)
	noOutlier         bool            // inbound: never eject the local app
}

// Defaults of the keys outside upstreams[] (those of upstreams[] are in
// package upstream).
const (
	DefaultAdmin        = "127.0.0.1:15000"
	DefaultDrainTimeout = 30 * time.Second
	// DefaultDrainInboundGrace and DefaultDrainQuietPeriod are the drain's
	// inbound grace and outbound quiet period.
	DefaultDrainInboundGrace = 2 * time.Second
	DefaultDrainQuietPeriod  = time.Second
	// DefaultProbe is the probe listener of a sidecar whose inbound listener
	// is reachable from other hosts (Istio's health port).
	DefaultProbe = "0.0.0.0:15021"
	// ProbeOff disables the probe listener.
	ProbeOff = "off"
	// DefaultDeregisterCriticalAfter is the Consul reaping delay.
	DefaultDeregisterCriticalAfter = time.Minute
)

// SetDefaults fills every key left out with its default.
func (c *Config) SetDefaults() {
	if c.Admin.Address == "" {
		c.Admin.Address = DefaultAdmin
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
			s.Timeout = upstream.DefaultTimeout
		}
		if s.DeregisterCriticalAfter == nil {
			d := DefaultDeregisterCriticalAfter
			s.DeregisterCriticalAfter = &d
		}
		if s.HealthCheck != nil {
			s.HealthCheck.SetDefaults()
		}
	}
	if c.Probe == "" && c.Service != nil && inboundReachable(c.Service.Inbound) {
		c.Probe = DefaultProbe
	}
	if c.Discovery.Consul != nil {
		c.Discovery.Consul.SetDefaults()
	}
	if c.Tracing != nil {
		c.Tracing.SetDefaults()
	}
	if c.XDSServer != nil && c.XDSServer.Debounce == nil {
		d := DefaultXDSDebounce
		c.XDSServer.Debounce = &d
	}
	if c.Defaults != nil {
		c.Defaults.SetDefaults()
	}
	if c.Drain == nil {
		c.Drain = &DrainConfig{}
	}
	if c.Limits == nil {
		c.Limits = &LimitsConfig{}
	}
	c.Limits.setDefaults()
	if c.MTLS == nil {
		c.MTLS = &MTLSConfig{}
	}
	if c.MTLS.Mode == "" {
		c.MTLS.Mode = mtls.ModeOff
	}
	if c.Drain.Timeout == 0 {
		c.Drain.Timeout = DefaultDrainTimeout
	}
	if c.Drain.InboundGrace == nil {
		// 2s, or the whole drain when drain.timeout is shorter.
		d := min(DefaultDrainInboundGrace, c.Drain.Timeout)
		c.Drain.InboundGrace = &d
	}
	if c.Drain.QuietPeriod == nil {
		d := DefaultDrainQuietPeriod
		c.Drain.QuietPeriod = &d
	}
	if c.AccessLog != nil {
		c.AccessLog.setDefaults()
	}
	for i := range c.Upstreams {
		c.Upstreams[i].SetDefaults()
	}
}

// SetDefaults fills an upstream's defaults.
func (u *Upstream) SetDefaults() {
	if u.Protocol == "" {
		u.Protocol = "http"
	}
	u.Settings.SetDefaults()
}

// bad is a config error naming the key and its value.
func bad(key string, value any, why string) error {
	return fmt.Errorf("%w: %w", ErrConfig, &upstream.KeyError{Key: key, Value: value, Why: why})
}

func validAddr(key, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return bad(key, addr, "is not host:port")
	}
	_ = host
	return nil
}

// inboundReachable reports whether an inbound listen address is meant for
// other hosts: a wildcard or a non-loopback IP (a pod), as opposed to
// loopback (several sidecars sharing one host) or none.
func inboundReachable(inbound string) bool {
	if inbound == "" {
		return false
	}
	host, _, err := net.SplitHostPort(inbound)
	if err != nil {
		return false
	}
	if host == "" {
		return true
	}
	if host == "localhost" {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err != nil || !ip.IsLoopback()
}

var protocols = map[string]bool{"http": true, "grpc": true, "tcp": true}

// Validate checks the whole config; errors name key and value.
func (c *Config) Validate() error {
	adminKey := "admin"
	if c.Admin.long {
		adminKey = "admin.address"
	}
	if err := validAddr(adminKey, c.Admin.Address); err != nil {
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
		if s.Address != "" {
			if _, err := netip.ParseAddr(s.Address); err != nil {
				return bad("service.address", s.Address, "is not an IP address")
			}
		}
		if *s.DeregisterCriticalAfter < 0 {
			return bad("service.deregister_critical_after", *s.DeregisterCriticalAfter, "must be >= 0 (0: never)")
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
	if c.Probe != "" && c.Probe != ProbeOff {
		if err := validAddr("probe", c.Probe); err != nil {
			return err
		}
	}
	if c.XDSServer != nil {
		if err := validAddr("xds_server.listen", c.XDSServer.Listen); err != nil {
			return err
		}
		if err := c.XDSServer.TLS.validate("xds_server.tls"); err != nil {
			return err
		}
		if d := c.XDSServer.Debounce; d != nil && *d <= 0 {
			return bad("xds_server.debounce", *d, "must be > 0")
		}
	}
	if err := c.Limits.validate(); err != nil {
		return err
	}
	if err := c.validateMTLS(); err != nil {
		return err
	}
	if c.Transparent != nil {
		if err := validAddr("transparent.listen", c.Transparent.Listen); err != nil {
			return err
		}
	}
	if c.Defaults != nil {
		if err := c.Defaults.Validate("defaults"); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
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
	if *c.Drain.InboundGrace < 0 {
		return bad("drain.inbound_grace", *c.Drain.InboundGrace, "must be >= 0")
	}
	if *c.Drain.QuietPeriod < 0 {
		return bad("drain.quiet_period", *c.Drain.QuietPeriod, "must be >= 0")
	}
	if *c.Drain.InboundGrace > c.Drain.Timeout {
		return bad("drain.inbound_grace", *c.Drain.InboundGrace, fmt.Sprintf("must not be longer than drain.timeout (%s)", c.Drain.Timeout))
	}
	if c.AccessLog != nil {
		if err := c.AccessLog.validate(); err != nil {
			return err
		}
	}
	seenSvc := map[string]int{}
	seenListen := map[string]string{c.Admin.Address: "admin"}
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
		if u.Failover != nil && c.Discovery.Consul == nil {
			return bad(p+".failover", nil, "needs discovery.consul (failover datacenters are Consul's; with file or xds discovery, give endpoints a priority)")
		}
		if u.ZoneAware && c.Zone == "" && c.Discovery.Consul == nil {
			return bad(p+".zone_aware", true, "needs the sidecar's zone: set zone")
		}
		if u.Listen != "" && !strings.HasSuffix(u.Listen, ":0") {
			if other, dup := seenListen[u.Listen]; dup {
				return bad(p+".listen", u.Listen, "is already used by "+other)
			}
			seenListen[u.Listen] = p + ".listen"
		}
	}
	return nil
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
	if err := u.Settings.Validate(p); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nil
}
