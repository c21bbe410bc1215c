package tracing

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// checkAttrs compares want (string, int, int64 or bool values; nil means
// absent) with the span's attributes.
func checkAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want map[string]any) {
	t.Helper()
	got := attrs(s)
	for k, w := range want {
		v, ok := got[attribute.Key(k)]
		if w == nil {
			if ok {
				t.Errorf("%s = %v, want absent", k, v.Emit())
			}
			continue
		}
		if !ok {
			t.Errorf("%s absent, want %v", k, w)
			continue
		}
		var match bool
		switch w := w.(type) {
		case string:
			match = v.Type() == attribute.STRING && v.AsString() == w
		case int:
			match = v.Type() == attribute.INT64 && v.AsInt64() == int64(w)
		case int64:
			match = v.Type() == attribute.INT64 && v.AsInt64() == w
		case bool:
			match = v.Type() == attribute.BOOL && v.AsBool() == w
		}
		if !match {
			t.Errorf("%s = %v (%s), want %v", k, v.Emit(), v.Type(), w)
		}
	}
}

func onlySpan(t *testing.T, p interface {
	Ended() []sdktrace.ReadOnlySpan
}) sdktrace.ReadOnlySpan {
	t.Helper()
	ended := p.Ended()
	if len(ended) != 1 {
		t.Fatalf("%d spans ended, want 1", len(ended))
	}
	return ended[0]
}

func TestServerSpan(t *testing.T) {
	for _, tc := range []struct {
		name       string
		req        func() *http.Request
		status     int
		outcome    Outcome
		wantName   string
		wantAttrs  map[string]any
		wantStatus codes.Code
	}{
		{
			name: "http 200",
			req: func() *http.Request {
				r := httptest.NewRequest(http.MethodPost, "http://web.local:8080/orders?id=1", nil)
				r.RemoteAddr = "198.18.0.7:51234"
				r.Header.Set("User-Agent", "curl/8")
				return r
			},
			status: 200, wantName: "POST",
			wantAttrs: map[string]any{
				"http.request.method": "POST", "url.path": "/orders", "url.scheme": "http",
				"server.address": "web.local", "server.port": 8080,
				"network.peer.address": "198.18.0.7", "network.peer.port": 51234,
				"network.protocol.version": "1.1", "user_agent.original": "curl/8",
				"http.response.status_code": 200, "sidemesh.outcome": "ok", "error.type": nil,
				"http.request.method_original": nil, "rpc.system": nil,
			},
			wantStatus: codes.Unset,
		},
		{
			name:   "404 is not a server error",
			req:    func() *http.Request { return httptest.NewRequest(http.MethodGet, "/missing", nil) },
			status: 404, wantName: "GET",
			wantAttrs:  map[string]any{"http.response.status_code": 404, "error.type": nil},
			wantStatus: codes.Unset,
		},
		{
			name:   "503 is",
			req:    func() *http.Request { return httptest.NewRequest(http.MethodGet, "/", nil) },
			status: 503, wantName: "GET",
			wantAttrs:  map[string]any{"http.response.status_code": 503, "error.type": "503", "sidemesh.outcome": "ok"},
			wantStatus: codes.Error,
		},
		{
			name:   "unknown method",
			req:    func() *http.Request { return httptest.NewRequest("PURGE", "/", nil) },
			status: 200, wantName: "HTTP",
			wantAttrs:  map[string]any{"http.request.method": "_OTHER", "http.request.method_original": "PURGE"},
			wantStatus: codes.Unset,
		},
		{
			name: "h2 with IPv6 host",
			req: func() *http.Request {
				r := httptest.NewRequest(http.MethodGet, "/", nil)
				r.ProtoMajor, r.ProtoMinor, r.Host, r.RemoteAddr = 2, 0, "[::1]:15006", "[fe80::1]:4000"
				return r
			},
			status: 200, wantName: "GET",
			wantAttrs: map[string]any{
				"network.protocol.version": "2", "server.address": "::1", "server.port": 15006,
				"network.peer.address": "fe80::1", "network.peer.port": 4000,
			},
			wantStatus: codes.Unset,
		},
		{
			name: "grpc",
			req: func() *http.Request {
				r := httptest.NewRequest(http.MethodPost, "/shop.v1.Orders/Get", nil)
				r.Header.Set("Content-Type", "application/grpc+proto")
				return r
			},
			status: 200, wantName: "shop.v1.Orders/Get",
			wantAttrs: map[string]any{
				"rpc.system": "grpc", "rpc.service": "shop.v1.Orders", "rpc.method": "Get", "url.path": "/shop.v1.Orders/Get",
			},
			wantStatus: codes.Unset,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, rec := recordingProvider(t, 1, nil)
			ctx, span := p.StartServer(context.Background(), tc.req())
			if trace.SpanFromContext(ctx) != span {
				t.Error("the returned context does not carry the span")
			}
			EndHTTP(span, tc.status, tc.outcome)
			s := onlySpan(t, rec)
			if s.Name() != tc.wantName || s.SpanKind() != trace.SpanKindServer {
				t.Errorf("span %q kind %v, want %q server", s.Name(), s.SpanKind(), tc.wantName)
			}
			checkAttrs(t, s, tc.wantAttrs)
			if s.Status().Code != tc.wantStatus {
				t.Errorf("status %v, want %v", s.Status(), tc.wantStatus)
			}
		})
	}
}

func TestClientSpans(t *testing.T) {
	for _, tc := range []struct {
		name       string
		endpoint   string // "" means none was chosen
		attempt    int
		status     int
		outcome    Outcome
		wantAttrs  map[string]any
		wantStatus codes.Code
		wantDesc   string
	}{
		{
			name: "ok", endpoint: "127.0.0.1:7001", status: 200,
			wantAttrs: map[string]any{
				"http.request.method": "GET", "url.path": "/items", "sidemesh.upstream": "api", "sidemesh.lb_policy": "round_robin",
				"server.address": "127.0.0.1", "server.port": 7001, "network.peer.address": "127.0.0.1", "network.peer.port": 7001,
				"http.response.status_code": 200, "sidemesh.outcome": "ok", "http.request.resend_count": nil, "error.type": nil,
			},
			wantStatus: codes.Unset,
		},
		{
			name: "hostname endpoint", endpoint: "api-1.internal:80", status: 200,
			wantAttrs:  map[string]any{"server.address": "api-1.internal", "server.port": 80, "network.peer.address": nil},
			wantStatus: codes.Unset,
		},
		{
			name: "client 404 is an error", endpoint: "127.0.0.1:7001", status: 404,
			wantAttrs:  map[string]any{"error.type": "404", "sidemesh.outcome": "ok"},
			wantStatus: codes.Error,
		},
		{
			name: "retried attempt", endpoint: "127.0.0.1:7002", status: 503, outcome: OutcomeRetried,
			wantAttrs:  map[string]any{"error.type": "503", "sidemesh.outcome": "retried", "http.response.status_code": 503},
			wantStatus: codes.Error, wantDesc: "retried",
		},
		{
			name: "second attempt", endpoint: "127.0.0.1:7001", attempt: 1, status: 200,
			wantAttrs:  map[string]any{"http.request.resend_count": 1, "sidemesh.outcome": "ok"},
			wantStatus: codes.Unset,
		},
		{
			name: "reset before headers", endpoint: "127.0.0.1:7002", outcome: OutcomeReset,
			wantAttrs:  map[string]any{"error.type": "reset", "http.response.status_code": nil},
			wantStatus: codes.Error, wantDesc: "reset",
		},
		{
			name: "no healthy upstream", status: 503, outcome: OutcomeNoHealthyUpstream,
			wantAttrs:  map[string]any{"sidemesh.outcome": "no_healthy_upstream", "server.address": nil, "error.type": "503"},
			wantStatus: codes.Error, wantDesc: "no_healthy_upstream",
		},
		{
			name: "overloaded", status: 503, outcome: OutcomeOverloaded,
			wantAttrs:  map[string]any{"sidemesh.outcome": "overloaded"},
			wantStatus: codes.Error, wantDesc: "overloaded",
		},
		{
			name: "ejected", endpoint: "127.0.0.1:7003", status: 500, outcome: OutcomeEjectedEndpoint,
			wantAttrs:  map[string]any{"sidemesh.outcome": "ejected_endpoint"},
			wantStatus: codes.Error, wantDesc: "ejected_endpoint",
		},
		{
			name: "timeout", endpoint: "127.0.0.1:7003", status: 504, outcome: OutcomeTimeout,
			wantAttrs:  map[string]any{"sidemesh.outcome": "timeout", "error.type": "504"},
			wantStatus: codes.Error, wantDesc: "timeout",
		},
		{
			name: "connect failure", endpoint: "127.0.0.1:1", outcome: OutcomeConnectFailure,
			wantAttrs:  map[string]any{"sidemesh.outcome": "connect_failure", "error.type": "connect_failure"},
			wantStatus: codes.Error, wantDesc: "connect_failure",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, rec := recordingProvider(t, 1, nil)
			r := httptest.NewRequest(http.MethodGet, "/items?q=1", nil)
			_, span := p.StartClient(context.Background(), r, Upstream{Service: "api", LBPolicy: "round_robin"}, tc.attempt)
			if tc.endpoint != "" {
				SetEndpoint(span, tc.endpoint)
			}
			EndHTTP(span, tc.status, tc.outcome)
			s := onlySpan(t, rec)
			if s.Name() != "GET" || s.SpanKind() != trace.SpanKindClient {
				t.Errorf("span %q kind %v, want GET client", s.Name(), s.SpanKind())
			}
			checkAttrs(t, s, tc.wantAttrs)
			if s.Status().Code != tc.wantStatus || s.Status().Description != tc.wantDesc {
				t.Errorf("status %+v, want %v %q", s.Status(), tc.wantStatus, tc.wantDesc)
			}
		})
	}
}

// TestAttemptsAreSiblings: each attempt of one request is its own client
// span under the app's span, and each is injected with its own span id.
func TestAttemptsAreSiblings(t *testing.T) {
	p, rec := recordingProvider(t, 1, nil)
	in := http.Header{}
	in.Set("traceparent", "00-"+tid+"-"+sid+"-01")
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header = in
	ctx := p.Extract(context.Background(), r.Header)
	var injected []string
	for attempt, outcome := range []Outcome{OutcomeRetried, OutcomeRetried, OutcomeOK} {
		actx, span := p.StartClient(ctx, r, Upstream{Service: "api"}, attempt)
		out := r.Header.Clone()
		p.Inject(actx, out)
		injected = append(injected, out.Get("traceparent"))
		EndHTTP(span, 200, outcome)
	}
	ended := rec.Ended()
	if len(ended) != 3 {
		t.Fatalf("%d spans, want 3", len(ended))
	}
	seen := map[string]bool{}
	for i, s := range ended {
		if s.Parent().SpanID().String() != sid || s.SpanContext().TraceID().String() != tid {
			t.Errorf("attempt %d: parent %s trace %s, want %s %s", i, s.Parent().SpanID(), s.SpanContext().TraceID(), sid, tid)
		}
		want := "00-" + tid + "-" + s.SpanContext().SpanID().String() + "-01"
		if injected[i] != want || seen[want] {
			t.Errorf("attempt %d injected %q, want %q (unique)", i, injected[i], want)
		}
		seen[want] = true
	}
}

func TestGRPCSpans(t *testing.T) {
	for _, tc := range []struct {
		name       string
		kind       trace.SpanKind
		code       int
		wantStatus codes.Code
	}{
		{"client ok", trace.SpanKindClient, 0, codes.Unset},
		{"client not found", trace.SpanKindClient, 5, codes.Error},
		{"server not found", trace.SpanKindServer, 5, codes.Unset},
		{"server unavailable", trace.SpanKindServer, 14, codes.Error},
		{"client no status", trace.SpanKindClient, -1, codes.Unset},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, rec := recordingProvider(t, 1, nil)
			r := httptest.NewRequest(http.MethodPost, "/grpc.health.v1.Health/Check", nil)
			r.Header.Set("Content-Type", "application/grpc")
			var span trace.Span
			if tc.kind == trace.SpanKindServer {
				_, span = p.StartServer(context.Background(), r)
			} else {
				_, span = p.StartClient(context.Background(), r, Upstream{Service: "health"}, 0)
			}
			EndGRPC(span, 200, tc.code, OutcomeOK)
			s := onlySpan(t, rec)
			want := map[string]any{
				"rpc.system": "grpc", "rpc.service": "grpc.health.v1.Health", "rpc.method": "Check",
				"rpc.grpc.status_code": tc.code, "http.response.status_code": 200,
			}
			if tc.code < 0 {
				want["rpc.grpc.status_code"] = nil
			}
			if s.Name() != "grpc.health.v1.Health/Check" {
				t.Errorf("name %q", s.Name())
			}
			checkAttrs(t, s, want)
			if s.Status().Code != tc.wantStatus {
				t.Errorf("status %v, want %v", s.Status().Code, tc.wantStatus)
			}
		})
	}
}

func TestGRPCStatus(t *testing.T) {
	h := func(v string) http.Header {
		if v == "" {
			return http.Header{}
		}
		return http.Header{"Grpc-Status": {v}}
	}
	for _, tc := range []struct {
		name            string
		header, trailer string
		want            int
	}{
		{"trailer", "", "0", 0},
		{"trailers-only", "14", "", 14},
		{"trailer wins", "1", "2", 2},
		{"none", "", "", -1},
		{"junk", "", "x", -1},
		{"too long", "", "123", -1},
		{"16", "", "16", 16},
	} {
		if got := GRPCStatus(h(tc.header), h(tc.trailer)); got != tc.want {
			t.Errorf("%s: GRPCStatus = %d, want %d", tc.name, got, tc.want)
		}
	}
	if got := GRPCStatus(nil, nil); got != -1 {
		t.Errorf("nil headers: %d", got)
	}
}

func TestTCPSpan(t *testing.T) {
	for _, tc := range []struct {
		name       string
		outcome    Outcome
		wantStatus codes.Code
	}{
		{"ok", OutcomeOK, codes.Unset},
		{"connect failure", OutcomeConnectFailure, codes.Error},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, rec := recordingProvider(t, 1, nil)
			_, span := p.StartTCP(context.Background(), Upstream{Service: "db", LBPolicy: "maglev"})
			SetEndpoint(span, "127.0.0.1:5432")
			EndTCP(span, 1234, 56789, tc.outcome)
			s := onlySpan(t, rec)
			if s.Name() != "tcp db" || s.SpanKind() != trace.SpanKindClient || s.Parent().IsValid() {
				t.Errorf("span %q kind %v parent %v, want root client span \"tcp db\"", s.Name(), s.SpanKind(), s.Parent())
			}
			checkAttrs(t, s, map[string]any{
				"network.transport": "tcp", "sidemesh.upstream": "db", "sidemesh.lb_policy": "maglev",
				"server.address": "127.0.0.1", "server.port": 5432,
				"sidemesh.bytes_sent": int64(1234), "sidemesh.bytes_received": int64(56789),
				"sidemesh.outcome": tc.outcome.String(),
			})
			if s.Status().Code != tc.wantStatus {
				t.Errorf("status %v, want %v", s.Status().Code, tc.wantStatus)
			}
		})
	}
}

func TestOutcomeString(t *testing.T) {
	want := []string{"ok", "retried", "overloaded", "no_healthy_upstream", "ejected_endpoint", "timeout", "connect_failure", "reset"}
	for i, w := range want {
		if got := Outcome(i).String(); got != w {
			t.Errorf("Outcome(%d) = %q, want %q", i, got, w)
		}
	}
	if got := numOutcomes.String(); got != "outcome(8)" {
		t.Errorf("out of range: %q", got)
	}
}

func TestSplitHostPort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port int
		ok   bool
	}{
		{"127.0.0.1:80", "127.0.0.1", 80, true},
		{"example.com", "example.com", 0, true},
		{"example.com:x", "example.com", 0, true},
		{"[::1]:443", "::1", 443, true},
		{"[::1]", "::1", 0, true},
		{"::1", "::1", 0, true},
		{"", "", 0, false},
		{":80", "", 80, false},
	} {
		host, port, ok := splitHostPort(tc.in)
		if host != tc.host || port != tc.port || ok != tc.ok {
			t.Errorf("splitHostPort(%q) = %q, %d, %v; want %q, %d, %v", tc.in, host, port, ok, tc.host, tc.port, tc.ok)
		}
	}
}
