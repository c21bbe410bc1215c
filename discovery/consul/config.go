package consul

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Errors of this package. They are wrapped with %w and context.
var (
	// ErrConfig marks an invalid discovery.consul configuration.
	ErrConfig = errors.New("consul: invalid config")
	// ErrRegistration marks a registration that could not be made or removed.
	ErrRegistration = errors.New("consul: registration failed")
)

// Consul's defaults and limits for blocking queries
// (https://developer.hashicorp.com/consul/api-docs/features/blocking).
const (
	DefaultAddress  = "127.0.0.1:8500"
	DefaultWaitTime = 5 * time.Minute
	MaxWaitTime     = 10 * time.Minute
)

// Config is `discovery.consul`.
//
// The ACL token is, in order: token, the contents of token_file, the
// CONSUL_HTTP_TOKEN environment variable (setting both token and token_file
// is an error). TLS is used when the address starts with https:// or any of
// ca_file, cert_file, key_file is set.
type Config struct {
	Address    string `yaml:"address"`
	Datacenter string `yaml:"datacenter"`
	Token      string `yaml:"token"`
	TokenFile  string `yaml:"token_file"`
	// Tag, when set, keeps only the instances that carry it.
	Tag      string `yaml:"tag"`
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// WaitTime is the `wait` of each blocking query: how long Consul may
	// hold it when nothing changes (Consul's default 5m, at most 10m).
	WaitTime time.Duration `yaml:"wait_time"`
}

// SetDefaults fills Consul's defaults for zero values.
func (c *Config) SetDefaults() {
	if c.Address == "" {
		c.Address = DefaultAddress
	}
	if c.WaitTime == 0 {
		c.WaitTime = DefaultWaitTime
	}
}

// Validate checks the config; path is the key path prefix, e.g.
// "discovery.consul".
func (c *Config) Validate(path string) error {
	if c.Address == "" {
		return fmt.Errorf("%w: %s.address: must not be empty", ErrConfig, path)
	}
	if _, err := splitAddress(c.Address); err != nil {
		return fmt.Errorf("%w: %s.address: %q %v", ErrConfig, path, c.Address, err)
	}
	if c.Token != "" && c.TokenFile != "" {
		return fmt.Errorf("%w: %s: token and token_file are both set (%q); set one", ErrConfig, path, c.TokenFile)
	}
	if c.WaitTime <= 0 || c.WaitTime > MaxWaitTime {
		return fmt.Errorf("%w: %s.wait_time: %q must be > 0 and <= %v (Consul's limit)", ErrConfig, path, c.WaitTime, MaxWaitTime)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return fmt.Errorf("%w: %s: cert_file %q and key_file %q must be set together", ErrConfig, path, c.CertFile, c.KeyFile)
	}
	return nil
}

// tls reports whether the config asks for HTTPS.
func (c *Config) tls() bool {
	return strings.HasPrefix(c.Address, "https://") || c.CAFile != "" || c.CertFile != "" || c.KeyFile != ""
}

// splitAddress strips an http:// or https:// scheme and checks host:port.
func splitAddress(addr string) (string, error) {
	hostport := addr
	if i := strings.Index(addr, "://"); i >= 0 {
		switch scheme := addr[:i]; scheme {
		case "http", "https":
			hostport = addr[i+3:]
		default:
			return "", fmt.Errorf("has scheme %q (want http or https)", scheme)
		}
	}
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		return "", fmt.Errorf("is not host:port")
	}
	return hostport, nil
}

// newClient builds an API client with its own transport, which the caller
// closes (CloseIdleConnections) when done. rt, when set, replaces the
// transport (tests).
func newClient(cfg Config, rt http.RoundTripper) (*api.Client, *http.Transport, error) {
	hostport, err := splitAddress(cfg.Address)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: address %q %v", ErrConfig, cfg.Address, err)
	}
	ac := &api.Config{
		Address:    hostport,
		Scheme:     "http",
		Datacenter: cfg.Datacenter,
		Token:      cfg.Token,
		TokenFile:  cfg.TokenFile,
		TLSConfig: api.TLSConfig{
			CAFile:   cfg.CAFile,
			CertFile: cfg.CertFile,
			KeyFile:  cfg.KeyFile,
		},
	}
	if cfg.tls() {
		ac.Scheme = "https"
	}
	var tr *http.Transport
	if rt != nil {
		ac.HttpClient = &http.Client{Transport: rt}
	} else {
		// One connection per in-flight blocking query (one per upstream),
		// reused across queries.
		tr = &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: 10 * time.Second,
		}
		ac.Transport = tr
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return client, tr, nil
}
