package health

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// decode decodes strictly, as the sidecar's config loader does.
func decode(t testing.TB, src string) (Config, error) {
	t.Helper()
	var c Config
	d := yaml.NewDecoder(strings.NewReader(src))
	d.KnownFields(true)
	err := d.Decode(&c)
	return c, err
}

func TestConfigDecode(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want Config
	}{
		{
			name: "design form",
			src:  `{http: /healthz, interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2}`,
			want: Config{HTTP: &HTTPCheck{Path: "/healthz"}, Interval: 5 * time.Second, Timeout: time.Second, UnhealthyThreshold: 3, HealthyThreshold: 2},
		},
		{
			name: "http mapping",
			src:  "http: {path: \"/ready?x=1\", host: api.internal, expected_statuses: [{start: 200, end: 400}], retriable_statuses: [{start: 503, end: 504}]}\ninterval_jitter: 100ms\ninitial_jitter: 2s\nno_traffic_interval: 30s\ninterval_jitter_percent: 10",
			want: Config{
				HTTP: &HTTPCheck{
					Path: "/ready?x=1", Host: "api.internal",
					ExpectedStatuses:  []StatusRange{{200, 400}},
					RetriableStatuses: []StatusRange{{503, 504}},
				},
				IntervalJitter: 100 * time.Millisecond, InitialJitter: 2 * time.Second,
				NoTrafficInterval: 30 * time.Second, IntervalJitterPercent: 10,
			},
		},
		{
			name: "tcp connect only",
			src:  `{tcp: {}}`,
			want: Config{TCP: &TCPCheck{}},
		},
		{
			name: "tcp send expect",
			src:  `{tcp: {send: "PING\r\n", expect: "PONG"}}`,
			want: Config{TCP: &TCPCheck{Send: "PING\r\n", Expect: "PONG"}},
		},
		{
			name: "grpc",
			src:  `{grpc: {service_name: api.v1.Api, authority: api}}`,
			want: Config{GRPC: &GRPCCheck{ServiceName: "api.v1.Api", Authority: "api"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decode(t, tt.src)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestConfigDecodeErrors(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"unknown top-level key", `{http: /h, intervl: 5s}`, "field intervl not found"},
		{"unknown http key", `{http: {path: /h, method: POST}}`, "field method not found"},
		{"unknown range key", `{http: {path: /h, expected_statuses: [{start: 200, stop: 300}]}}`, "field stop not found"},
		{"unknown tcp key", `{tcp: {sned: x}}`, "field sned not found"},
		{"http sequence", `{http: [/a, /b]}`, "http must be a path or a mapping"},
		{"bad duration", `{http: /h, interval: often}`, "often"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decode(t, tt.src)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestConfigSetDefaults(t *testing.T) {
	c := Config{HTTP: &HTTPCheck{Path: "/h"}}
	c.SetDefaults()
	want := Config{
		HTTP:     &HTTPCheck{Path: "/h"},
		Interval: 5 * time.Second, Timeout: time.Second,
		UnhealthyThreshold: 3, HealthyThreshold: 2,
		NoTrafficInterval: 60 * time.Second,
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got %+v\nwant %+v", c, want)
	}
	// Set values survive.
	c = Config{TCP: &TCPCheck{}, Interval: time.Second, Timeout: 2 * time.Second, UnhealthyThreshold: 1, HealthyThreshold: 5, NoTrafficInterval: time.Minute * 2}
	before := c
	c.SetDefaults()
	if !reflect.DeepEqual(c, before) {
		t.Fatalf("SetDefaults changed set values: %+v", c)
	}
	if err := c.Validate("hc"); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want string // "" means valid
	}{
		{"http ok", `{http: /healthz}`, ""},
		{"tcp ok", `{tcp: {}}`, ""},
		{"grpc ok", `{grpc: {}}`, ""},
		{"timeout longer than interval", `{http: /h, interval: 1s, timeout: 3s}`, ""},
		{"none", `{interval: 5s}`, `upstreams[0].health_check: exactly one of http, tcp, grpc must be set, got none`},
		{"two", `{http: /h, tcp: {}}`, `upstreams[0].health_check: exactly one of http, tcp, grpc must be set, got http and tcp`},
		{"three", `{http: /h, tcp: {}, grpc: {}}`, `got http and tcp and grpc`},
		{"negative interval", `{http: /h, interval: -1s}`, `upstreams[0].health_check.interval: "-1s" must be > 0`},
		{"negative timeout", `{http: /h, timeout: -5ms}`, `upstreams[0].health_check.timeout: "-5ms" must be > 0`},
		{"negative no traffic", `{http: /h, no_traffic_interval: -1m}`, `upstreams[0].health_check.no_traffic_interval: "-1m0s" must be > 0`},
		{"negative jitter", `{http: /h, interval_jitter: -1s}`, `upstreams[0].health_check.interval_jitter: "-1s" must be >= 0`},
		{"negative initial jitter", `{http: /h, initial_jitter: -1s}`, `upstreams[0].health_check.initial_jitter: "-1s" must be >= 0`},
		{"negative unhealthy", `{http: /h, unhealthy_threshold: -2}`, `upstreams[0].health_check.unhealthy_threshold: -2 must be >= 1`},
		{"negative healthy", `{http: /h, healthy_threshold: -1}`, `upstreams[0].health_check.healthy_threshold: -1 must be >= 1`},
		{"jitter percent", `{http: /h, interval_jitter_percent: 101}`, `upstreams[0].health_check.interval_jitter_percent: 101 must be in 0..100`},
		{"relative path", `{http: healthz}`, `upstreams[0].health_check.http.path: "healthz" must start with '/'`},
		{"empty path", `{http: {host: x}}`, `upstreams[0].health_check.http.path: "" must start with '/'`},
		{"path with space", `{http: "/a b"}`, `upstreams[0].health_check.http.path: "/a b" must not contain whitespace or '#'`},
		{"bad host", `{http: {path: /h, host: "a/b"}}`, `upstreams[0].health_check.http.host: "a/b" must not contain whitespace or '/'`},
		{"empty range", `{http: {path: /h, expected_statuses: [{start: 200, end: 200}]}}`, `upstreams[0].health_check.http.expected_statuses[0]: [200, 200) must satisfy 100 <= start < end <= 600`},
		{"range too high", `{http: {path: /h, retriable_statuses: [{start: 500, end: 504}, {start: 500, end: 601}]}}`, `upstreams[0].health_check.http.retriable_statuses[1]: [500, 601) must satisfy`},
		{"range too low", `{http: {path: /h, expected_statuses: [{start: 99, end: 200}]}}`, `expected_statuses[0]: [99, 200)`},
		{"bad authority", `{grpc: {authority: "a b"}}`, `upstreams[0].health_check.grpc.authority: "a b" must not contain whitespace or '/'`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := decode(t, tt.src)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			c.SetDefaults()
			err = c.Validate("upstreams[0].health_check")
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("err = %v does not wrap ErrInvalidConfig", err)
			}
		})
	}
}

func TestConfigTCPExpectTooLong(t *testing.T) {
	c := Config{TCP: &TCPCheck{Expect: strings.Repeat("x", maxTCPExpect+1)}}
	c.SetDefaults()
	err := c.Validate("hc")
	if err == nil || !strings.Contains(err.Error(), "hc.tcp.expect: 65537 bytes, must be at most 65536") {
		t.Fatalf("err = %v", err)
	}
}

func TestHTTPCheckMarshalRoundTrip(t *testing.T) {
	for _, c := range []Config{
		{HTTP: &HTTPCheck{Path: "/healthz"}, Interval: 5 * time.Second},
		{HTTP: &HTTPCheck{Path: "/h", Host: "api", ExpectedStatuses: []StatusRange{{200, 300}}}},
	} {
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decode(t, string(out))
		if err != nil {
			t.Fatalf("decode %s: %v", out, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("round trip of %s: got %+v want %+v", out, got, c)
		}
	}
	out, _ := yaml.Marshal(Config{HTTP: &HTTPCheck{Path: "/healthz"}})
	if !bytes.Contains(out, []byte("http: /healthz")) {
		t.Fatalf("short form not used: %s", out)
	}
}

// FuzzConfig: any YAML either fails to decode or validate, or yields a
// config a Checker can run (positive interval and timeout, one check kind).
func FuzzConfig(f *testing.F) {
	for _, s := range []string{
		`{http: /healthz, interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2}`,
		`{tcp: {send: "a", expect: "b"}}`,
		`{grpc: {service_name: x}}`,
		`{http: {path: /h, expected_statuses: [{start: 200, end: 400}]}}`,
		`{http: [1]}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		c, err := decode(t, src)
		if err != nil {
			return
		}
		c.SetDefaults()
		if c.Validate("hc") != nil {
			return
		}
		kinds := 0
		for _, set := range []bool{c.HTTP != nil, c.TCP != nil, c.GRPC != nil} {
			if set {
				kinds++
			}
		}
		if kinds != 1 || c.Interval <= 0 || c.Timeout <= 0 || c.UnhealthyThreshold < 1 || c.HealthyThreshold < 1 {
			t.Fatalf("Validate accepted %+v", c)
		}
		if c.HTTP != nil && !strings.HasPrefix(c.HTTP.Path, "/") {
			t.Fatalf("Validate accepted path %q", c.HTTP.Path)
		}
	})
}
