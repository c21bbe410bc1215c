package tracing

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

func closedAddr(t *testing.T) string {
	return "127.0.0.1:" + strconv.Itoa(testenv.FreePorts(t, 1)[0])
}

func shutdown(t *testing.T, p *Provider) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.Shutdown(ctx) // nothing listens: the exporter may complain
}

func TestSetupInvalid(t *testing.T) {
	cfg := &Config{OTLPEndpoint: "127.0.0.1:4317", SamplingRatio: ptr(2.0)}
	_, err := Setup(context.Background(), cfg, Resource{}, nil)
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("Setup = %v, want ErrInvalidConfig", err)
	}
}

func TestSetupLeavesConfigAlone(t *testing.T) {
	cfg := &Config{OTLPEndpoint: closedAddr(t)}
	p, err := Setup(context.Background(), cfg, Resource{InstanceID: "n"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, p)
	if cfg.SamplingRatio != nil || cfg.Propagators != nil || cfg.MaxQueueSize != 0 {
		t.Fatalf("Setup changed the caller's config: %+v", cfg)
	}
}

// TestSamplerPrecedence: OTEL_TRACES_SAMPLER applies when sampling_ratio is
// left out, and sampling_ratio wins when it is set.
func TestSamplerPrecedence(t *testing.T) {
	t.Setenv("OTEL_TRACES_SAMPLER", "always_off")
	for _, tc := range []struct {
		name        string
		ratio       *float64
		wantSampled bool
	}{
		{"env", nil, false},
		{"config wins", ptr(1.0), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Setup(context.Background(), &Config{OTLPEndpoint: closedAddr(t), SamplingRatio: tc.ratio}, Resource{InstanceID: "n"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer shutdown(t, p)
			_, span := p.StartServer(context.Background(), httptest.NewRequest(http.MethodGet, "/", nil))
			defer span.End()
			if span.SpanContext().IsSampled() != tc.wantSampled {
				t.Fatalf("sampled = %v, want %v", span.SpanContext().IsSampled(), tc.wantSampled)
			}
		})
	}
}

// TestSetupFromEnv: with an empty tracing block, the exporter endpoint,
// protocol, service name and resource attributes come from OTEL_*; a
// service name from the config wins over OTEL_SERVICE_NAME.
func TestSetupFromEnv(t *testing.T) {
	j := testenv.StartJaeger(t)
	for _, tc := range []struct {
		name        string
		env         map[string]string
		cfg         Config
		res         Resource
		wantService string
	}{
		{
			name: "grpc",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + j.OTLPGRPCAddr(),
				"OTEL_SERVICE_NAME":           "env-svc-grpc",
				"OTEL_RESOURCE_ATTRIBUTES":    "deployment.environment.name=test,service.instance.id=ignored",
			},
			res:         Resource{InstanceID: "node-7"},
			wantService: "env-svc-grpc",
		},
		{
			name: "http",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + j.OTLPHTTPAddr(),
				"OTEL_SERVICE_NAME":           "ignored",
				"OTEL_RESOURCE_ATTRIBUTES":    "deployment.environment.name=test",
			},
			cfg:         Config{ServiceName: "cfg-svc-http"},
			res:         Resource{ServiceName: "mesh-name", InstanceID: "node-7"},
			wantService: "cfg-svc-http",
		},
		{
			name: "mesh service name over env",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://" + j.OTLPGRPCAddr(),
				"OTEL_SERVICE_NAME":                  "ignored",
				"OTEL_RESOURCE_ATTRIBUTES":           "deployment.environment.name=test",
			},
			res:         Resource{ServiceName: "mesh-name-env", InstanceID: "node-7"},
			wantService: "mesh-name-env",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg := tc.cfg
			p, err := Setup(context.Background(), &cfg, tc.res, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, span := p.StartServer(context.Background(), httptest.NewRequest(http.MethodGet, "/", nil))
			EndHTTP(span, 200, OutcomeOK)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := p.Shutdown(ctx); err != nil {
				t.Fatalf("shutdown: %v", err)
			}
			spans := j.Trace(t, span.SpanContext().TraceID().String(), 1)
			s := spans[0]
			if s.Service != tc.wantService {
				t.Errorf("service %q, want %q", s.Service, tc.wantService)
			}
			if got := s.ProcessTags["deployment.environment.name"]; got != "test" {
				t.Errorf("deployment.environment.name = %v, want test (from OTEL_RESOURCE_ATTRIBUTES)", got)
			}
			if got := s.ProcessTags["service.instance.id"]; got != "node-7" {
				t.Errorf("service.instance.id = %v, want node-7 (config over env)", got)
			}
		})
	}
}
