package testenv

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// TestJaegerRoundTrip sends a parent and a child span over each OTLP
// transport and reads them back through the query API.
func TestJaegerRoundTrip(t *testing.T) {
	j := StartJaeger(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		service string
		newExp  func() (sdktrace.SpanExporter, error)
	}{
		{"otlp-grpc", "roundtrip-grpc", func() (sdktrace.SpanExporter, error) {
			return otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(j.OTLPGRPCAddr()), otlptracegrpc.WithInsecure())
		}},
		{"otlp-http", "roundtrip-http", func() (sdktrace.SpanExporter, error) {
			return otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(j.OTLPHTTPAddr()), otlptracehttp.WithInsecure())
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exp, err := tc.newExp()
			if err != nil {
				t.Fatal(err)
			}
			tp := sdktrace.NewTracerProvider(
				sdktrace.WithSyncer(exp),
				sdktrace.WithResource(resource.NewSchemaless(
					attribute.String("service.name", tc.service),
					attribute.String("service.instance.id", "node-1"),
				)),
			)
			tr := tp.Tracer("testenv")
			pctx, parent := tr.Start(ctx, "parent", trace.WithSpanKind(trace.SpanKindServer))
			_, child := tr.Start(pctx, "child", trace.WithSpanKind(trace.SpanKindClient),
				trace.WithAttributes(attribute.Int("n", 7), attribute.Bool("b", true), attribute.String("s", "x")))
			child.End()
			parent.End()
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := tp.Shutdown(sctx); err != nil {
				t.Fatalf("shutdown: %v", err)
			}

			traceID := parent.SpanContext().TraceID().String()
			spans := j.Trace(t, traceID, 2)
			if len(spans) != 2 {
				t.Fatalf("got %d spans, want 2: %+v", len(spans), spans)
			}
			byName := map[string]JaegerSpan{}
			for _, s := range spans {
				byName[s.Operation] = s
				if s.TraceID != traceID {
					t.Errorf("span %s: trace id %s, want %s", s.Operation, s.TraceID, traceID)
				}
				if s.Service != tc.service {
					t.Errorf("span %s: service %q, want %q", s.Operation, s.Service, tc.service)
				}
				if got := s.ProcessTags["service.instance.id"]; got != "node-1" {
					t.Errorf("span %s: service.instance.id %v, want node-1", s.Operation, got)
				}
			}
			p, c := byName["parent"], byName["child"]
			if p.SpanID != parent.SpanContext().SpanID().String() || p.ParentSpanID != "" {
				t.Errorf("parent: span %s parent %q, want span %s and no parent", p.SpanID, p.ParentSpanID, parent.SpanContext().SpanID())
			}
			if c.ParentSpanID != p.SpanID {
				t.Errorf("child: parent %q, want %q", c.ParentSpanID, p.SpanID)
			}
			if p.Kind() != "server" || c.Kind() != "client" {
				t.Errorf("kinds: parent %q child %q, want server and client", p.Kind(), c.Kind())
			}
			for k, want := range map[string]any{"n": int64(7), "b": true, "s": "x"} {
				if got := c.Tags[k]; got != want {
					t.Errorf("child tag %s = %#v, want %#v", k, got, want)
				}
			}

			traces := j.FindTraces(t, tc.service, 1)
			if len(traces) != 1 || len(traces[0]) != 2 || traces[0][0].TraceID != traceID {
				t.Errorf("FindTraces(%q) = %+v, want the one trace %s", tc.service, traces, traceID)
			}
		})
	}

	t.Run("unknown-trace", func(t *testing.T) {
		spans, err := j.TraceNow(ctx, "0123456789abcdef0123456789abcdef")
		if err != nil || len(spans) != 0 {
			t.Fatalf("TraceNow(unknown) = %v, %v; want no spans, no error", spans, err)
		}
	})
}

func TestParseJaegerTraces(t *testing.T) {
	const body = `{"data":[{"traceID":"abc","spans":[
	  {"traceID":"abc","spanID":"2","operationName":"child","references":[{"refType":"FOLLOWS_FROM","traceID":"abc","spanID":"9"},{"refType":"CHILD_OF","traceID":"abc","spanID":"1"}],
	   "startTime":2000,"duration":5,"processID":"p1",
	   "tags":[{"key":"i","type":"int64","value":42},{"key":"f","type":"float64","value":0.5},{"key":"b","type":"bool","value":false},{"key":"s","type":"string","value":"v"}]},
	  {"traceID":"abc","spanID":"1","operationName":"root","references":[],"startTime":1000,"duration":10,"processID":"p1","tags":[]}],
	 "processes":{"p1":{"serviceName":"web","tags":[{"key":"service.instance.id","type":"string","value":"web-1"}]}}}]}`
	traces, err := parseJaegerTraces([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if len(traces) != 1 || len(traces[0]) != 2 {
		t.Fatalf("got %+v, want one trace of two spans", traces)
	}
	root, child := traces[0][0], traces[0][1] // sorted by start time
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"root operation", root.Operation, "root"},
		{"root span id padded", root.SpanID, "0000000000000001"},
		{"trace id padded", root.TraceID, "00000000000000000000000000000abc"},
		{"root parent", root.ParentSpanID, ""},
		{"child parent is the CHILD_OF ref", child.ParentSpanID, "0000000000000001"},
		{"service", child.Service, "web"},
		{"process tag", child.ProcessTags["service.instance.id"], "web-1"},
		{"int64 tag", child.Tags["i"], int64(42)},
		{"float64 tag", child.Tags["f"], 0.5},
		{"bool tag", child.Tags["b"], false},
		{"string tag", child.Tags["s"], "v"},
		{"start", root.Start, time.UnixMicro(1000)},
		{"duration", child.Duration, 5 * time.Microsecond},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#v, want %#v", tc.name, tc.got, tc.want)
		}
	}

	if _, err := parseJaegerTraces([]byte(`{"data":null,"errors":[{"code":400,"msg":"bad trace id"}]}`)); err == nil {
		t.Error("an errors response parsed without error")
	}
}
