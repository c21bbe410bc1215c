package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Jaeger timeouts: start-up (the binary loads a large collector distribution)
// and how long Trace and FindTraces wait for spans to become queryable.
const (
	jaegerReadyTimeout = 30 * time.Second
	JaegerTraceTimeout = 15 * time.Second
)

// JaegerBinary returns the jaeger binary built by `make tools`
// (bin/tools/jaeger, Jaeger v2 from github.com/jaegertracing/jaeger/cmd/jaeger)
// or $SIDEMESH_JAEGER; see Tool for what happens when it is missing.
func JaegerBinary(t testing.TB) string {
	t.Helper()
	return Tool(t, "jaeger", "SIDEMESH_JAEGER")
}

// Jaeger is a Jaeger v2 all-in-one (an OpenTelemetry Collector distribution)
// with in-memory storage, receiving OTLP over gRPC and HTTP and serving the
// query API, every port one from FreePorts on 127.0.0.1. Nothing else is
// opened: no Jaeger/Zipkin receivers, health check, zpages or self-metrics,
// so parallel tests cannot clash. It is killed when the test ends.
//
// With JaegerInPod it runs in a pod instead, listening on every address of
// the pod on Jaeger's default ports (OTLP 4317 and 4318, query 16686 and
// 16685), so other pods send it spans and the test reads them at the pod's
// address.
type Jaeger struct {
	*Process
	host                                     string // where the test reaches it
	otlpGRPC, otlpHTTP, queryHTTP, queryGRPC int
	pod                                      *Pod
}

// Jaeger's default ports, used in a pod.
const (
	JaegerOTLPGRPCPort  = 4317
	JaegerOTLPHTTPPort  = 4318
	JaegerQueryHTTPPort = 16686
	jaegerQueryGRPCPort = 16685
)

// JaegerOption is an option of StartJaeger.
type JaegerOption func(*jaegerOptions)

type jaegerOptions struct{ pod *Pod }

// JaegerInPod runs Jaeger in pod (see Jaeger).
func JaegerInPod(pod *Pod) JaegerOption { return func(o *jaegerOptions) { o.pod = pod } }

// jaegerConfig is the collector config; the %s:%d are the listen address
// and the four ports. Format:
// cmd/jaeger/internal/all-in-one.yaml of jaegertracing/jaeger v1.76.0.
const jaegerConfig = `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: []
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    enable_tracing: false
    http:
      endpoint: %[1]s:%[2]d
    grpc:
      endpoint: %[1]s:%[3]d

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %[1]s:%[4]d
      http:
        endpoint: %[1]s:%[5]d

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`

// StartJaeger starts Jaeger and waits until its OTLP receivers accept
// connections and its query API answers.
func StartJaeger(t testing.TB, opts ...JaegerOption) *Jaeger {
	t.Helper()
	var o jaegerOptions
	for _, opt := range opts {
		opt(&o)
	}
	bin := JaegerBinary(t)
	var ports []int
	j := &Jaeger{host: "127.0.0.1", pod: o.pod}
	listen := "127.0.0.1"
	if o.pod != nil {
		ports = []int{JaegerQueryHTTPPort, jaegerQueryGRPCPort, JaegerOTLPGRPCPort, JaegerOTLPHTTPPort}
		j.host, listen = o.pod.IP.String(), "0.0.0.0"
	} else {
		ports = FreePorts(t, 4)
	}
	j.queryHTTP, j.queryGRPC, j.otlpGRPC, j.otlpHTTP = ports[0], ports[1], ports[2], ports[3]
	cfg := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, jaegerConfig, listen, j.queryHTTP, j.queryGRPC, j.otlpGRPC, j.otlpHTTP), 0o644); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if o.pod != nil {
		j.Process = o.pod.StartProcess(t, "jaeger", ProcOpts{}, bin, "--config", cfg)
	} else {
		j.Process = StartProcess(t, "jaeger", bin, "--config", cfg)
	}
	j.WaitReady(jaegerReadyTimeout, j.ready)
	return j
}

func (j *Jaeger) ready() error {
	for _, port := range []int{j.otlpGRPC, j.otlpHTTP} {
		c, err := net.DialTimeout("tcp", j.addr(port), time.Second)
		if err != nil {
			return err
		}
		c.Close()
	}
	_, err := j.get(context.Background(), "/api/services")
	return err
}

func (j *Jaeger) addr(port int) string { return net.JoinHostPort(j.host, strconv.Itoa(port)) }

// OTLPGRPCAddr is the OTLP/gRPC receiver, host:port (plaintext).
func (j *Jaeger) OTLPGRPCAddr() string { return j.addr(j.otlpGRPC) }

// OTLPHTTPAddr is the OTLP/HTTP receiver, host:port (plaintext; path /v1/traces).
func (j *Jaeger) OTLPHTTPAddr() string { return j.addr(j.otlpHTTP) }

// QueryURL is the base URL of the query API and UI, e.g. http://127.0.0.1:41234.
func (j *Jaeger) QueryURL() string { return "http://" + j.addr(j.queryHTTP) }

// Pod is the pod Jaeger runs in; nil on loopback.
func (j *Jaeger) Pod() *Pod { return j.pod }

// JaegerSpan is one span as the query API returns it.
type JaegerSpan struct {
	TraceID      string // 32 lower-case hex digits
	SpanID       string // 16 lower-case hex digits
	ParentSpanID string // the CHILD_OF reference; "" for a root span
	Operation    string // the span name
	Service      string // the process's service.name
	Start        time.Time
	Duration     time.Duration
	// Tags are the span's attributes, plus span.kind, otel.status_code,
	// error and the like that Jaeger derives. Values are string, bool,
	// int64 or float64.
	Tags map[string]any
	// ProcessTags are the resource attributes other than service.name.
	ProcessTags map[string]any
}

// Kind is the span.kind tag: "server", "client", "internal", ...
func (s JaegerSpan) Kind() string {
	k, _ := s.Tags["span.kind"].(string)
	return k
}

// Trace polls the query API until the trace has at least n spans, and
// returns them sorted by start time; the test fails if that does not happen
// within JaegerTraceTimeout. traceID is hex, as trace.TraceID.String gives.
func (j *Jaeger) Trace(t testing.TB, traceID string, n int) []JaegerSpan {
	t.Helper()
	var spans []JaegerSpan
	Eventually(t, JaegerTraceTimeout, fmt.Sprintf("jaeger trace %s with %d spans", traceID, n), func() error {
		var err error
		spans, err = j.trace(context.Background(), traceID)
		if err != nil {
			return err
		}
		if len(spans) < n {
			return fmt.Errorf("trace has %d spans", len(spans))
		}
		return nil
	})
	return spans
}

// TraceNow returns the trace's spans as stored now, without waiting; a
// trace Jaeger does not have gives no spans and no error.
func (j *Jaeger) TraceNow(ctx context.Context, traceID string) ([]JaegerSpan, error) {
	return j.trace(ctx, traceID)
}

func (j *Jaeger) trace(ctx context.Context, traceID string) ([]JaegerSpan, error) {
	body, err := j.get(ctx, "/api/traces/"+url.PathEscape(traceID))
	if errors.Is(err, errJaegerNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	traces, err := parseJaegerTraces(body)
	if err != nil {
		return nil, err
	}
	var spans []JaegerSpan
	for _, tr := range traces {
		spans = append(spans, tr...)
	}
	return spans, nil
}

// FindTraces polls the query API until service has at least n traces, and
// returns them (each sorted by start time); the test fails if that does not
// happen within JaegerTraceTimeout.
func (j *Jaeger) FindTraces(t testing.TB, service string, n int) [][]JaegerSpan {
	t.Helper()
	var traces [][]JaegerSpan
	q := url.Values{"service": {service}, "limit": {strconv.Itoa(max(n, 20))}, "lookback": {"1h"}}
	Eventually(t, JaegerTraceTimeout, fmt.Sprintf("%d jaeger traces of service %q", n, service), func() error {
		body, err := j.get(context.Background(), "/api/traces?"+q.Encode())
		if err != nil {
			return err
		}
		if traces, err = parseJaegerTraces(body); err != nil {
			return err
		}
		if len(traces) < n {
			return fmt.Errorf("service has %d traces", len(traces))
		}
		return nil
	})
	return traces
}

var errJaegerNotFound = errors.New("not found")

func (j *Jaeger) get(ctx context.Context, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.QueryURL()+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("GET %s: %w", path, errJaegerNotFound)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("GET %s: %s: %.200s", path, resp.Status, body)
	}
	return body, nil
}

// The query API's JSON (Jaeger's model/json: the v1 HTTP API).
type (
	jaegerResponse struct {
		Data   []jaegerTrace `json:"data"`
		Errors []struct {
			Code int    `json:"code"`
			Msg  string `json:"msg"`
		} `json:"errors"`
	}
	jaegerTrace struct {
		Spans     []jaegerSpan             `json:"spans"`
		Processes map[string]jaegerProcess `json:"processes"`
	}
	jaegerSpan struct {
		TraceID       string `json:"traceID"`
		SpanID        string `json:"spanID"`
		OperationName string `json:"operationName"`
		References    []struct {
			RefType string `json:"refType"`
			TraceID string `json:"traceID"`
			SpanID  string `json:"spanID"`
		} `json:"references"`
		StartTime int64       `json:"startTime"` // µs since the epoch
		Duration  int64       `json:"duration"`  // µs
		Tags      []jaegerTag `json:"tags"`
		ProcessID string      `json:"processID"`
	}
	jaegerProcess struct {
		ServiceName string      `json:"serviceName"`
		Tags        []jaegerTag `json:"tags"`
	}
	jaegerTag struct {
		Key   string          `json:"key"`
		Type  string          `json:"type"`
		Value json.RawMessage `json:"value"`
	}
)

func parseJaegerTraces(body []byte) ([][]JaegerSpan, error) {
	var r jaegerResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("jaeger query response: %w", err)
	}
	if len(r.Errors) > 0 {
		return nil, fmt.Errorf("jaeger query error %d: %s", r.Errors[0].Code, r.Errors[0].Msg)
	}
	out := make([][]JaegerSpan, 0, len(r.Data))
	for _, tr := range r.Data {
		spans := make([]JaegerSpan, 0, len(tr.Spans))
		for _, s := range tr.Spans {
			p := tr.Processes[s.ProcessID]
			js := JaegerSpan{
				TraceID:     jaegerPadID(s.TraceID, 32),
				SpanID:      jaegerPadID(s.SpanID, 16),
				Operation:   s.OperationName,
				Service:     p.ServiceName,
				Start:       time.UnixMicro(s.StartTime),
				Duration:    time.Duration(s.Duration) * time.Microsecond,
				Tags:        jaegerTags(s.Tags),
				ProcessTags: jaegerTags(p.Tags),
			}
			for _, ref := range s.References {
				if ref.RefType == "CHILD_OF" {
					js.ParentSpanID = jaegerPadID(ref.SpanID, 16)
					break
				}
			}
			spans = append(spans, js)
		}
		sort.SliceStable(spans, func(a, b int) bool { return spans[a].Start.Before(spans[b].Start) })
		out = append(out, spans)
	}
	return out, nil
}

// jaegerPadID restores the leading zeros the v1 API trims from ids.
func jaegerPadID(id string, n int) string {
	id = strings.ToLower(id)
	if len(id) < n {
		id = strings.Repeat("0", n-len(id)) + id
	}
	return id
}

func jaegerTags(tags []jaegerTag) map[string]any {
	m := make(map[string]any, len(tags))
	for _, tag := range tags {
		var v any
		var err error
		switch tag.Type {
		case "bool":
			var b bool
			err = json.Unmarshal(tag.Value, &b)
			v = b
		case "int64":
			var n int64
			err = json.Unmarshal(tag.Value, &n)
			v = n
		case "float64":
			var f float64
			err = json.Unmarshal(tag.Value, &f)
			v = f
		default: // string, binary
			var s string
			err = json.Unmarshal(tag.Value, &s)
			v = s
		}
		if err != nil {
			v = string(tag.Value)
		}
		m[tag.Key] = v
	}
	return m
}
