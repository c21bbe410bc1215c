package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// ErrSetup is wrapped by the errors Setup returns.
var ErrSetup = errors.New("tracing: setup")

// ScopeName is the instrumentation scope of every span sidemesh makes.
const ScopeName = "github.com/sidemesh/sidemesh/tracing"

// Resource names the process whose spans these are.
type Resource struct {
	// ServiceName is the mesh service name (the config's service.name);
	// empty for a sidecar without a local app.
	ServiceName string
	// InstanceID is the node id; it becomes service.instance.id, and
	// service.name when there is no other.
	InstanceID string
	// Version is the sidemesh version, reported as telemetry.distro.version.
	Version string
}

// Provider owns the OpenTelemetry tracer provider, exporter and propagators
// of one sidecar. A nil *Provider, and the Provider Setup returns for a nil
// Config, are disabled: every method is safe to call and does next to nothing
// (no allocation on the request path).
//
// Concurrency: all methods are safe for concurrent use. Shutdown must be
// called once, when no more spans will be started.
type Provider struct {
	tp     *sdktrace.TracerProvider
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	owned  []string // header keys Inject overwrites, canonical form
	bat    *batcher
}

// Setup builds a Provider from cfg (a copy is defaulted and validated; the
// caller's value is not changed) and res. A nil cfg, or OTEL_SDK_DISABLED=true,
// gives a disabled Provider. No connection is made here: the exporter
// connects lazily and in the background, so Setup succeeds while the
// collector is down. A nil logger discards.
func Setup(ctx context.Context, cfg *Config, res Resource, logger *slog.Logger) (*Provider, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "tracing")
	if cfg == nil || strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return &Provider{}, nil
	}
	c := *cfg
	c.Propagators = append([]string(nil), cfg.Propagators...)
	c.SetDefaults()
	if err := c.Validate("tracing"); err != nil {
		return nil, err
	}
	prop, owned, err := newPropagator(c.Propagators)
	if err != nil {
		return nil, err
	}
	r, err := newResource(ctx, &c, res)
	if err != nil {
		return nil, err
	}
	exp, err := newExporter(ctx, &c)
	if err != nil {
		return nil, err
	}
	bat := newBatcher(exp, &c, logger)
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(r),
		sdktrace.WithSpanProcessor(bat),
	}
	if c.SamplingRatio != nil { // else OTEL_TRACES_SAMPLER, read by the SDK
		opts = append(opts, sdktrace.WithSampler(Sampler(*c.SamplingRatio)))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	sampling := "OTEL_TRACES_SAMPLER=" + os.Getenv("OTEL_TRACES_SAMPLER")
	if c.SamplingRatio != nil {
		sampling = "parent-based ratio " + strconv.FormatFloat(*c.SamplingRatio, 'g', -1, 64)
	}
	logger.Info("tracing enabled", "exporter", exporterName(&c), "sampling", sampling,
		"propagators", c.Propagators, "service_name", serviceName(&c, res))
	return newProvider(tp, prop, owned, bat), nil
}

func newProvider(tp *sdktrace.TracerProvider, prop propagation.TextMapPropagator, owned []string, bat *batcher) *Provider {
	return &Provider{
		tp:     tp,
		tracer: tp.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL)),
		prop:   prop,
		owned:  owned,
		bat:    bat,
	}
}

// Sampler is the sampler Setup installs for a sampling ratio: a decision that
// arrives with the request (sampled or not) is kept; a request that starts a
// trace is sampled with probability ratio, decided from its trace id so every
// hop that sees the same id agrees (OpenTelemetry ParentBased(TraceIdRatioBased)).
func Sampler(ratio float64) sdktrace.Sampler {
	return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))
}

func serviceName(c *Config, res Resource) string {
	switch {
	case c.ServiceName != "":
		return c.ServiceName
	case res.ServiceName != "":
		return res.ServiceName
	case os.Getenv("OTEL_SERVICE_NAME") != "":
		return os.Getenv("OTEL_SERVICE_NAME")
	default:
		return res.InstanceID
	}
}

// newResource merges, later winning: the SDK's telemetry.sdk.* attributes,
// OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, then what the config says.
func newResource(ctx context.Context, c *Config, res Resource) (*resource.Resource, error) {
	attrs := []attribute.KeyValue{
		semconv.TelemetryDistroName("sidemesh"),
	}
	if name := serviceName(c, res); name != "" {
		attrs = append(attrs, semconv.ServiceName(name))
	}
	if res.InstanceID != "" {
		attrs = append(attrs, semconv.ServiceInstanceID(res.InstanceID))
	}
	if res.Version != "" {
		attrs = append(attrs, semconv.TelemetryDistroVersion(res.Version))
	}
	r, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
		resource.WithAttributes(attrs...),
	)
	if err != nil {
		return nil, fmt.Errorf("%w: resource: %w", ErrSetup, err)
	}
	return r, nil
}

func exporterName(c *Config) string {
	switch {
	case c.OTLPHTTPEndpoint != "":
		return "otlp/http " + c.OTLPHTTPEndpoint
	case c.OTLPEndpoint != "":
		return "otlp/grpc " + c.OTLPEndpoint
	default:
		return "otlp/" + envProtocol() + " from OTEL_EXPORTER_OTLP_*"
	}
}

// envProtocol is "grpc" or "http" from OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL.
func envProtocol() string {
	p := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if p == "" {
		p = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	if strings.HasPrefix(strings.TrimSpace(p), "http") {
		return "http"
	}
	return "grpc"
}

// newExporter builds the OTLP exporter. Exporter retries are off: the
// batcher drops a batch whose export fails rather than hold the queue.
func newExporter(ctx context.Context, c *Config) (sdktrace.SpanExporter, error) {
	// With no endpoint anywhere the exporters default to localhost with TLS;
	// the OTLP default endpoint is plaintext (http://localhost:4317).
	noEnv := os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" &&
		os.Getenv("OTEL_EXPORTER_OTLP_INSECURE") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_INSECURE") == ""
	var (
		exp sdktrace.SpanExporter
		err error
	)
	switch {
	case c.OTLPHTTPEndpoint != "" || (c.OTLPEndpoint == "" && envProtocol() == "http"):
		opts := []otlptracehttp.Option{
			otlptracehttp.WithTimeout(c.ExportTimeout),
			otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: false}),
		}
		switch e := c.OTLPHTTPEndpoint; {
		case strings.Contains(e, "://"):
			opts = append(opts, otlptracehttp.WithEndpointURL(e))
		case e != "":
			opts = append(opts, otlptracehttp.WithEndpoint(e), otlptracehttp.WithInsecure())
		case noEnv:
			opts = append(opts, otlptracehttp.WithInsecure())
		}
		exp, err = otlptracehttp.New(ctx, opts...)
	default:
		opts := []otlptracegrpc.Option{
			otlptracegrpc.WithTimeout(c.ExportTimeout),
			otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}),
		}
		if c.OTLPEndpoint != "" {
			opts = append(opts, otlptracegrpc.WithEndpoint(c.OTLPEndpoint), otlptracegrpc.WithInsecure())
		} else if noEnv {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		exp, err = otlptracegrpc.New(ctx, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: exporter: %w", ErrSetup, err)
	}
	return exp, nil
}

// Enabled reports whether spans are made at all.
func (p *Provider) Enabled() bool { return p != nil && p.tracer != nil }

// TracerProvider returns the SDK provider, or a no-op one when disabled, for
// instrumentation libraries (for example gRPC stats handlers) that want one.
func (p *Provider) TracerProvider() trace.TracerProvider {
	if !p.Enabled() {
		return noopProvider
	}
	return p.tp
}

// Propagator returns the configured propagators (a no-op when disabled).
func (p *Provider) Propagator() propagation.TextMapPropagator {
	if !p.Enabled() {
		return propagation.NewCompositeTextMapPropagator()
	}
	return p.prop
}

// Stats returns how many spans were exported, and how many were dropped:
// because the queue was full, because their export failed or timed out, or
// because they ended after Shutdown. Unsampled spans are neither.
func (p *Provider) Stats() (exported, dropped uint64) {
	if !p.Enabled() || p.bat == nil {
		return 0, 0
	}
	return p.bat.stats()
}

// ForceFlush exports the spans ended so far, waiting at most until ctx
// expires.
func (p *Provider) ForceFlush(ctx context.Context) error {
	if !p.Enabled() {
		return nil
	}
	return p.tp.ForceFlush(ctx)
}

// Shutdown exports what is queued, within ctx, and releases the exporter.
// Spans ended afterwards are dropped.
func (p *Provider) Shutdown(ctx context.Context) error {
	if !p.Enabled() {
		return nil
	}
	return p.tp.Shutdown(ctx)
}
