package tracing

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrInvalidConfig is wrapped by every error Config.Validate returns.
var ErrInvalidConfig = errors.New("tracing: invalid config")

// Defaults. The batch values are the OpenTelemetry SDK's batch span processor
// defaults (OTEL_BSP_*); the export timeout is the OTLP exporter default
// (OTEL_EXPORTER_OTLP_TIMEOUT). Envoy samples 100% of requests when tracing
// is configured (random_sampling 100%), so the sampling ratio defaults to 1.
const (
	DefaultSamplingRatio      = 1.0
	DefaultMaxQueueSize       = 2048
	DefaultMaxExportBatchSize = 512
	DefaultBatchTimeout       = 5 * time.Second
	DefaultExportTimeout      = 10 * time.Second
)

// Propagator names accepted in Config.Propagators and OTEL_PROPAGATORS. The
// names and their meaning are the OpenTelemetry SDK environment specification's.
// Every B3 propagator extracts both the single-header and the multi-header form;
// the name only chooses what is injected upstream.
const (
	PropagatorTraceContext = "tracecontext" // W3C traceparent / tracestate
	PropagatorBaggage      = "baggage"      // W3C baggage
	PropagatorB3           = "b3"           // inject the single `b3` header
	PropagatorB3Multi      = "b3multi"      // inject X-B3-TraceId, X-B3-SpanId, X-B3-Sampled
	PropagatorNone         = "none"         // propagate nothing
)

// DefaultPropagators is used when neither Config.Propagators nor
// OTEL_PROPAGATORS is set: W3C for OpenTelemetry-instrumented apps, B3 multi
// headers for Zipkin-era apps and Envoy-based meshes.
var DefaultPropagators = []string{PropagatorTraceContext, PropagatorBaggage, PropagatorB3Multi}

// Config is the `tracing` block of the sidecar config. A nil *Config means
// tracing is off.
//
// Every key may be left out. Precedence, per key, follows the OpenTelemetry
// rule that explicit configuration wins over the environment: a key set in
// the file wins; otherwise the standard OTEL_* environment variable is used;
// otherwise the default below.
//
//	key                    environment                                     default
//	otlp_endpoint          OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT (+_PROTOCOL,  localhost:4317, plaintext gRPC
//	otlp_http_endpoint       _INSECURE, _HEADERS, _CERTIFICATE: read by the
//	                         OTLP exporter itself)
//	service_name           (see Resource)                                  service.name, else node
//	sampling_ratio         OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG    1.0, parent-based
//	propagators            OTEL_PROPAGATORS                                [tracecontext, baggage, b3multi]
//	max_queue_size         OTEL_BSP_MAX_QUEUE_SIZE                         2048
//	max_export_batch_size  OTEL_BSP_MAX_EXPORT_BATCH_SIZE                  512
//	batch_timeout          OTEL_BSP_SCHEDULE_DELAY (ms)                    5s
//	export_timeout         OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT (ms)        10s
//
// Environment values that do not parse are ignored, as the OpenTelemetry SDK
// ignores them. OTEL_SDK_DISABLED=true turns tracing off (Setup returns a
// disabled Provider).
//
//	tracing: {otlp_endpoint: 127.0.0.1:4317, sampling_ratio: 0.1}
//	tracing: {otlp_http_endpoint: 127.0.0.1:4318, propagators: [tracecontext, b3]}
//	tracing: {}    # everything from OTEL_* or the defaults
type Config struct {
	// OTLPEndpoint is the collector's OTLP/gRPC address, host:port, plaintext.
	OTLPEndpoint string `yaml:"otlp_endpoint,omitempty" json:"otlp_endpoint,omitempty"`
	// OTLPHTTPEndpoint exports with OTLP/HTTP (protobuf) instead: host:port
	// (path /v1/traces, plaintext) or a full http:// or https:// URL.
	// At most one of OTLPEndpoint and OTLPHTTPEndpoint may be set.
	OTLPHTTPEndpoint string `yaml:"otlp_http_endpoint,omitempty" json:"otlp_http_endpoint,omitempty"`
	// ServiceName overrides the service.name resource attribute.
	ServiceName string `yaml:"service_name,omitempty" json:"service_name,omitempty"`
	// SamplingRatio is the probability, in [0, 1], that a request which arrives
	// without a sampling decision starts a sampled trace. A decision made
	// upstream (a sampled or unsampled parent) is always honoured. Nil after
	// SetDefaults only when OTEL_TRACES_SAMPLER chooses the sampler.
	SamplingRatio *float64 `yaml:"sampling_ratio,omitempty" json:"sampling_ratio,omitempty"`
	// Propagators lists the header formats extracted from requests and
	// injected into upstream requests, in order (see the Propagator* names).
	Propagators []string `yaml:"propagators,omitempty" json:"propagators,omitempty"`
	// MaxQueueSize bounds the spans waiting for export. When the queue is full
	// (collector slow or down) new spans are dropped and counted; requests are
	// never blocked.
	MaxQueueSize int `yaml:"max_queue_size,omitempty" json:"max_queue_size,omitempty"`
	// MaxExportBatchSize is the most spans sent in one export request.
	MaxExportBatchSize int `yaml:"max_export_batch_size,omitempty" json:"max_export_batch_size,omitempty"`
	// BatchTimeout is the longest a span waits in the queue before a partial
	// batch is exported.
	BatchTimeout time.Duration `yaml:"batch_timeout,omitempty" json:"batch_timeout,omitempty"`
	// ExportTimeout bounds one export request; spans of a failed or timed-out
	// export are dropped and counted (no retries: the next batch is already
	// queueing behind it).
	ExportTimeout time.Duration `yaml:"export_timeout,omitempty" json:"export_timeout,omitempty"`
}

// SetDefaults fills the keys left out from the OTEL_* environment variables
// and then from the defaults. It is idempotent.
func (c *Config) SetDefaults() { c.setDefaults(os.Getenv) }

func (c *Config) setDefaults(getenv func(string) string) {
	if c.SamplingRatio == nil && getenv("OTEL_TRACES_SAMPLER") == "" {
		r := DefaultSamplingRatio
		c.SamplingRatio = &r
	}
	if len(c.Propagators) == 0 {
		c.Propagators = envList(getenv("OTEL_PROPAGATORS"))
		if len(c.Propagators) == 0 {
			c.Propagators = slices.Clone(DefaultPropagators)
		}
	}
	if c.MaxQueueSize == 0 {
		c.MaxQueueSize = envInt(getenv("OTEL_BSP_MAX_QUEUE_SIZE"), DefaultMaxQueueSize)
	}
	if c.MaxExportBatchSize == 0 {
		c.MaxExportBatchSize = min(envInt(getenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"), DefaultMaxExportBatchSize), c.MaxQueueSize)
	}
	if c.BatchTimeout == 0 {
		c.BatchTimeout = envMillis(getenv("OTEL_BSP_SCHEDULE_DELAY"), DefaultBatchTimeout)
	}
	if c.ExportTimeout == 0 {
		d := envMillis(getenv("OTEL_EXPORTER_OTLP_TIMEOUT"), DefaultExportTimeout)
		c.ExportTimeout = envMillis(getenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"), d)
	}
}

// Validate checks a defaulted Config; path is the key path of the block,
// usually "tracing".
func (c *Config) Validate(path string) error {
	if c.OTLPEndpoint != "" && c.OTLPHTTPEndpoint != "" {
		return fmt.Errorf("%w: %s: at most one of otlp_endpoint and otlp_http_endpoint may be set, got %q and %q",
			ErrInvalidConfig, path, c.OTLPEndpoint, c.OTLPHTTPEndpoint)
	}
	if c.OTLPEndpoint != "" {
		if err := validHostPort(c.OTLPEndpoint); err != nil {
			return fmt.Errorf("%w: %s.otlp_endpoint: %q must be host:port: %v", ErrInvalidConfig, path, c.OTLPEndpoint, err)
		}
	}
	if e := c.OTLPHTTPEndpoint; e != "" {
		if strings.Contains(e, "://") {
			u, err := url.Parse(e)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fmt.Errorf("%w: %s.otlp_http_endpoint: %q must be host:port or an http(s) URL", ErrInvalidConfig, path, e)
			}
		} else if err := validHostPort(e); err != nil {
			return fmt.Errorf("%w: %s.otlp_http_endpoint: %q must be host:port or an http(s) URL: %v", ErrInvalidConfig, path, e, err)
		}
	}
	if r := c.SamplingRatio; r != nil && !(*r >= 0 && *r <= 1) { // also rejects NaN
		return fmt.Errorf("%w: %s.sampling_ratio: %v must be in [0, 1]", ErrInvalidConfig, path, *r)
	}
	for i, p := range c.Propagators {
		switch p {
		case PropagatorTraceContext, PropagatorBaggage, PropagatorB3, PropagatorB3Multi:
		case PropagatorNone:
			if len(c.Propagators) > 1 {
				return fmt.Errorf("%w: %s.propagators[%d]: %q cannot be combined with other propagators", ErrInvalidConfig, path, i, p)
			}
		default:
			return fmt.Errorf("%w: %s.propagators[%d]: unknown propagator %q (want one of tracecontext, baggage, b3, b3multi, none)",
				ErrInvalidConfig, path, i, p)
		}
	}
	for _, n := range []struct {
		key string
		v   int
	}{
		{"max_queue_size", c.MaxQueueSize},
		{"max_export_batch_size", c.MaxExportBatchSize},
	} {
		if n.v <= 0 {
			return fmt.Errorf("%w: %s.%s: %d must be > 0", ErrInvalidConfig, path, n.key, n.v)
		}
	}
	if c.MaxExportBatchSize > c.MaxQueueSize {
		return fmt.Errorf("%w: %s.max_export_batch_size: %d must be <= max_queue_size (%d)",
			ErrInvalidConfig, path, c.MaxExportBatchSize, c.MaxQueueSize)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"batch_timeout", c.BatchTimeout},
		{"export_timeout", c.ExportTimeout},
	} {
		if d.v <= 0 {
			return fmt.Errorf("%w: %s.%s: %q must be > 0", ErrInvalidConfig, path, d.key, d.v)
		}
	}
	return nil
}

func validHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("missing host")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}

func envList(v string) []string {
	var out []string
	for f := range strings.SplitSeq(v, ",") {
		if f = strings.ToLower(strings.TrimSpace(f)); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func envInt(v string, def int) int {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n <= 0 {
		return def
	}
	return n
}

func envMillis(v string, def time.Duration) time.Duration {
	n := envInt(v, 0)
	if n == 0 {
		return def
	}
	return time.Duration(n) * time.Millisecond
}
