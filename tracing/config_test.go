package tracing

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func ptr[T any](v T) *T { return &v }

func TestSetDefaults(t *testing.T) {
	defaults := Config{
		SamplingRatio:      ptr(1.0),
		Propagators:        []string{"tracecontext", "baggage", "b3multi"},
		MaxQueueSize:       2048,
		MaxExportBatchSize: 512,
		BatchTimeout:       5 * time.Second,
		ExportTimeout:      10 * time.Second,
	}
	for _, tc := range []struct {
		name string
		in   Config
		env  map[string]string
		want Config
	}{
		{name: "empty", want: defaults},
		{
			name: "env fills what the file leaves out",
			env: map[string]string{
				"OTEL_PROPAGATORS":                  " b3 , tracecontext ",
				"OTEL_BSP_MAX_QUEUE_SIZE":           "100",
				"OTEL_BSP_MAX_EXPORT_BATCH_SIZE":    "1000", // capped at the queue size
				"OTEL_BSP_SCHEDULE_DELAY":           "250",
				"OTEL_EXPORTER_OTLP_TIMEOUT":        "3000",
				"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2000", // the signal-specific one wins
			},
			want: Config{
				SamplingRatio:      ptr(1.0),
				Propagators:        []string{"b3", "tracecontext"},
				MaxQueueSize:       100,
				MaxExportBatchSize: 100,
				BatchTimeout:       250 * time.Millisecond,
				ExportTimeout:      2 * time.Second,
			},
		},
		{
			name: "file wins over env",
			in: Config{
				SamplingRatio: ptr(0.0), Propagators: []string{"b3"}, MaxQueueSize: 10, MaxExportBatchSize: 5,
				BatchTimeout: time.Second, ExportTimeout: time.Second,
			},
			env: map[string]string{
				"OTEL_TRACES_SAMPLER": "always_on", "OTEL_PROPAGATORS": "tracecontext", "OTEL_BSP_MAX_QUEUE_SIZE": "100",
				"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "50", "OTEL_BSP_SCHEDULE_DELAY": "9", "OTEL_EXPORTER_OTLP_TIMEOUT": "9",
			},
			want: Config{
				SamplingRatio: ptr(0.0), Propagators: []string{"b3"}, MaxQueueSize: 10, MaxExportBatchSize: 5,
				BatchTimeout: time.Second, ExportTimeout: time.Second,
			},
		},
		{
			name: "OTEL_TRACES_SAMPLER leaves the ratio to the SDK",
			env:  map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"},
			want: func() Config { c := defaults; c.SamplingRatio = nil; return c }(),
		},
		{
			name: "bad env values are ignored",
			env:  map[string]string{"OTEL_BSP_MAX_QUEUE_SIZE": "many", "OTEL_BSP_SCHEDULE_DELAY": "-5", "OTEL_PROPAGATORS": " , "},
			want: defaults,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.in
			c.setDefaults(func(k string) string { return tc.env[k] })
			if !reflect.DeepEqual(c, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", c, tc.want)
			}
			again := c
			again.setDefaults(func(k string) string { return tc.env[k] })
			if !reflect.DeepEqual(again, c) {
				t.Fatalf("SetDefaults is not idempotent: %+v then %+v", c, again)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	valid := func() Config {
		c := Config{OTLPEndpoint: "127.0.0.1:4317"}
		c.setDefaults(func(string) string { return "" })
		return c
	}
	for _, tc := range []struct {
		name    string
		mutate  func(*Config)
		wantErr string // "" means valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"no endpoint (env or default)", func(c *Config) { c.OTLPEndpoint = "" }, ""},
		{"http host:port", func(c *Config) { c.OTLPEndpoint, c.OTLPHTTPEndpoint = "", "collector:4318" }, ""},
		{"http url", func(c *Config) { c.OTLPEndpoint, c.OTLPHTTPEndpoint = "", "https://collector/v1/traces" }, ""},
		{"ratio 0", func(c *Config) { c.SamplingRatio = ptr(0.0) }, ""},
		{"both endpoints", func(c *Config) { c.OTLPHTTPEndpoint = "127.0.0.1:4318" },
			`tracing: at most one of otlp_endpoint and otlp_http_endpoint may be set, got "127.0.0.1:4317" and "127.0.0.1:4318"`},
		{"endpoint without port", func(c *Config) { c.OTLPEndpoint = "collector" }, `tracing.otlp_endpoint: "collector" must be host:port`},
		{"endpoint bad port", func(c *Config) { c.OTLPEndpoint = "collector:99999" }, `tracing.otlp_endpoint: "collector:99999" must be host:port: bad port "99999"`},
		{"endpoint no host", func(c *Config) { c.OTLPEndpoint = ":4317" }, `tracing.otlp_endpoint: ":4317" must be host:port: missing host`},
		{"http bad scheme", func(c *Config) { c.OTLPEndpoint, c.OTLPHTTPEndpoint = "", "grpc://x:1" },
			`tracing.otlp_http_endpoint: "grpc://x:1" must be host:port or an http(s) URL`},
		{"ratio > 1", func(c *Config) { c.SamplingRatio = ptr(1.5) }, `tracing.sampling_ratio: 1.5 must be in [0, 1]`},
		{"ratio < 0", func(c *Config) { c.SamplingRatio = ptr(-0.1) }, `tracing.sampling_ratio: -0.1 must be in [0, 1]`},
		{"ratio NaN", func(c *Config) { c.SamplingRatio = ptr(math.NaN()) }, `tracing.sampling_ratio: NaN must be in [0, 1]`},
		{"unknown propagator", func(c *Config) { c.Propagators = []string{"tracecontext", "jaeger"} },
			`tracing.propagators[1]: unknown propagator "jaeger"`},
		{"none with others", func(c *Config) { c.Propagators = []string{"none", "b3"} },
			`tracing.propagators[0]: "none" cannot be combined with other propagators`},
		{"queue size", func(c *Config) { c.MaxQueueSize = -1 }, `tracing.max_queue_size: -1 must be > 0`},
		{"batch size", func(c *Config) { c.MaxExportBatchSize = 0 }, `tracing.max_export_batch_size: 0 must be > 0`},
		{"batch > queue", func(c *Config) { c.MaxQueueSize, c.MaxExportBatchSize = 10, 11 },
			`tracing.max_export_batch_size: 11 must be <= max_queue_size (10)`},
		{"batch timeout", func(c *Config) { c.BatchTimeout = -time.Second }, `tracing.batch_timeout: "-1s" must be > 0`},
		{"export timeout", func(c *Config) { c.ExportTimeout = -1 }, `tracing.export_timeout: "-1ns" must be > 0`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.mutate(&c)
			err := c.Validate("tracing")
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tc.wantErr)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestConfigYAML(t *testing.T) {
	const doc = `
otlp_endpoint: 127.0.0.1:4317
sampling_ratio: 0
propagators: [tracecontext, b3]
max_queue_size: 100
batch_timeout: 200ms
`
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	want := Config{
		OTLPEndpoint:  "127.0.0.1:4317",
		SamplingRatio: ptr(0.0), // explicit 0 is kept, not defaulted
		Propagators:   []string{"tracecontext", "b3"},
		MaxQueueSize:  100,
		BatchTimeout:  200 * time.Millisecond,
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got %+v, want %+v", c, want)
	}
	c.setDefaults(func(string) string { return "" })
	if *c.SamplingRatio != 0 || c.MaxExportBatchSize != 100 {
		t.Fatalf("after defaults: ratio %v batch %d, want 0 and 100 (capped at the queue)", *c.SamplingRatio, c.MaxExportBatchSize)
	}
	if err := c.Validate("tracing"); err != nil {
		t.Fatal(err)
	}
}

// FuzzConfigYAML: decoding, defaulting and validating any document never
// panics, and a config that validates has usable batch parameters.
func FuzzConfigYAML(f *testing.F) {
	f.Add("otlp_endpoint: 127.0.0.1:4317\nsampling_ratio: 0.5\n")
	f.Add("otlp_http_endpoint: http://x:4318/v1/traces\npropagators: [none]\n")
	f.Add("max_queue_size: 1\nmax_export_batch_size: 1\nbatch_timeout: 1ns\n")
	f.Fuzz(func(t *testing.T, doc string) {
		var c Config
		if yaml.Unmarshal([]byte(doc), &c) != nil {
			return
		}
		c.setDefaults(func(string) string { return "" })
		if c.Validate("tracing") != nil {
			return
		}
		if c.MaxQueueSize <= 0 || c.MaxExportBatchSize <= 0 || c.MaxExportBatchSize > c.MaxQueueSize ||
			c.BatchTimeout <= 0 || c.ExportTimeout <= 0 {
			t.Fatalf("valid config with unusable batch parameters: %+v", c)
		}
		if _, _, err := newPropagator(c.Propagators); err != nil {
			t.Fatalf("valid propagators %v: %v", c.Propagators, err)
		}
	})
}
