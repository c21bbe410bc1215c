package consul

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	var c Config
	c.SetDefaults()
	if c.Address != "127.0.0.1:8500" || c.WaitTime != 5*time.Minute {
		t.Fatalf("defaults = %+v, want address 127.0.0.1:8500, wait_time 5m", c)
	}
	if err := c.Validate("discovery.consul"); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string // substring; "" means valid
	}{
		{"https address", func(c *Config) { c.Address = "https://consul.local:8501" }, ""},
		{"tls files", func(c *Config) { c.CAFile, c.CertFile, c.KeyFile = "ca.pem", "c.pem", "k.pem" }, ""},
		{"token", func(c *Config) { c.Token = "secret" }, ""},
		{"empty address", func(c *Config) { c.Address = "" }, "discovery.consul.address: must not be empty"},
		{"no port", func(c *Config) { c.Address = "consul.local" }, `discovery.consul.address: "consul.local" is not host:port`},
		{"bad scheme", func(c *Config) { c.Address = "unix:///tmp/consul.sock" }, `discovery.consul.address: "unix:///tmp/consul.sock" has scheme "unix"`},
		{"token and token_file", func(c *Config) { c.Token, c.TokenFile = "x", "/etc/token" }, "token and token_file are both set"},
		{"negative wait", func(c *Config) { c.WaitTime = -time.Second }, `discovery.consul.wait_time: "-1s" must be > 0`},
		{"wait over 10m", func(c *Config) { c.WaitTime = 11 * time.Minute }, `discovery.consul.wait_time: "11m0s" must be > 0 and <= 10m0s`},
		{"cert without key", func(c *Config) { c.CertFile = "c.pem" }, `cert_file "c.pem" and key_file "" must be set together`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{}
			c.SetDefaults()
			tt.mutate(&c)
			err := c.Validate("discovery.consul")
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrConfig) {
				t.Fatalf("Validate = %v, want ErrConfig containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestRegistrationValidate(t *testing.T) {
	ok := func() Registration {
		return Registration{ID: "web-1", Name: "web", Address: "127.0.0.1", Port: 15006, Weight: 10,
			Check: &Check{HTTP: "http://127.0.0.1:15000/ready", Interval: 5 * time.Second}}
	}
	tests := []struct {
		name    string
		mutate  func(*Registration)
		wantErr string
	}{
		{"valid", func(*Registration) {}, ""},
		{"no check", func(r *Registration) { r.Check = nil }, ""},
		{"no id", func(r *Registration) { r.ID = "" }, "node: must not be empty"},
		{"no name", func(r *Registration) { r.Name = "" }, "service.name: must not be empty"},
		{"port 0", func(r *Registration) { r.Port = 0 }, "service.inbound: port 0 must be in 1..65535"},
		{"weight 0", func(r *Registration) { r.Weight = 0 }, "service.weight: 0 must be an integer in 1..128"},
		{"weight 129", func(r *Registration) { r.Weight = 129 }, "service.weight: 129 must be an integer in 1..128"},
		{"check without url", func(r *Registration) { r.Check.HTTP = "" }, "service.health_check.http: must not be empty"},
		{"negative interval", func(r *Registration) { r.Check.Interval = -time.Second }, `service.health_check.interval: "-1s" must be > 0`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok()
			tt.mutate(&r)
			err := r.Validate("service")
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrConfig) {
				t.Fatalf("Validate = %v, want ErrConfig containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestRegistrationRequest(t *testing.T) {
	r := Registration{ID: "web-1", Name: "web", Address: "127.0.0.1", Port: 15006, Weight: 10,
		Meta: map[string]string{"sidemesh_version": "v0.1.0"},
		Check: &Check{HTTP: "http://127.0.0.1:15000/ready", Interval: 5 * time.Second, Timeout: time.Second,
			DeregisterCriticalServiceAfter: time.Minute}}
	ar := r.agentRegistration()
	if ar.ID != "web-1" || ar.Name != "web" || ar.Address != "127.0.0.1" || ar.Port != 15006 ||
		ar.Weights.Passing != 10 || ar.Weights.Warning != 1 || ar.Meta["sidemesh_version"] != "v0.1.0" {
		t.Fatalf("registration = %+v", ar)
	}
	c := ar.Check
	if c == nil || c.HTTP != "http://127.0.0.1:15000/ready" || c.Interval != "5s" || c.Timeout != "1s" || c.DeregisterCriticalServiceAfter != "1m0s" {
		t.Fatalf("check = %+v", c)
	}
	for _, wildcard := range []string{"0.0.0.0", "::", ""} {
		r.Address = wildcard
		if got := r.agentRegistration().Address; got != "" {
			t.Errorf("listener host %q registered as address %q, want none (the node address)", wildcard, got)
		}
	}
	r.Check = &Check{HTTP: "http://x/ready"}
	if c := r.agentRegistration().Check; c.Interval != "10s" || c.Timeout != "" {
		t.Fatalf("check defaults = %+v, want interval 10s and Consul's timeout", c)
	}
}
