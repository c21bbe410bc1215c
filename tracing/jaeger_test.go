package tracing

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// TestExportToJaeger runs the spans of one proxied request through Setup's
// pipeline into a real Jaeger and reads them back: an inbound server span
// and two attempts (a retried one and a good one) under it, with the
// resource, kinds, parent links and attributes intact.
func TestExportToJaeger(t *testing.T) {
	j := testenv.StartJaeger(t)
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"otlp-grpc", Config{OTLPEndpoint: j.OTLPGRPCAddr()}},
		{"otlp-http", Config{OTLPHTTPEndpoint: j.OTLPHTTPAddr()}},
		{"otlp-http-url", Config{OTLPHTTPEndpoint: "http://" + j.OTLPHTTPAddr() + "/v1/traces"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			cfg := tc.cfg
			cfg.BatchTimeout = 50 * time.Millisecond
			p, err := Setup(ctx, &cfg, Resource{ServiceName: "web-" + tc.name, InstanceID: "web-1", Version: "v1.2.3-test"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Shutdown(ctx)

			// Inbound: a request without trace context starts the trace.
			in := httptest.NewRequest(http.MethodGet, "http://web:8080/checkout", nil)
			in.RemoteAddr = "198.18.2.3:40000"
			sctx, server := p.StartServer(ctx, in)
			toApp := in.Header.Clone()
			p.Inject(sctx, toApp)

			// The app calls an upstream, propagating the headers it got.
			out := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:9001/charge", nil)
			out.Header = toApp
			octx := p.Extract(ctx, out.Header)
			up := Upstream{Service: "payments", LBPolicy: "least_request"}
			for attempt, a := range []struct {
				endpoint string
				status   int
				outcome  Outcome
			}{
				{"127.0.0.1:7001", 503, OutcomeRetried},
				{"127.0.0.1:7002", 200, OutcomeOK},
			} {
				_, span := p.StartClient(octx, out, up, attempt)
				SetEndpoint(span, a.endpoint)
				EndHTTP(span, a.status, a.outcome)
			}
			EndHTTP(server, 200, OutcomeOK)
			if err := p.ForceFlush(ctx); err != nil {
				t.Fatalf("flush: %v", err)
			}

			traceID := server.SpanContext().TraceID().String()
			spans := j.Trace(t, traceID, 3)
			if len(spans) != 3 {
				t.Fatalf("%d spans in Jaeger, want 3", len(spans))
			}
			root := spans[0]
			if root.Operation != "GET" || root.Kind() != "server" || root.ParentSpanID != "" ||
				root.SpanID != server.SpanContext().SpanID().String() {
				t.Errorf("root span %+v, want the GET server span without parent", root)
			}
			for _, s := range spans {
				if s.Service != "web-"+tc.name {
					t.Errorf("span %s: service %q", s.SpanID, s.Service)
				}
				for k, want := range map[string]any{
					"service.instance.id": "web-1", "telemetry.distro.name": "sidemesh", "telemetry.distro.version": "v1.2.3-test",
				} {
					if got := s.ProcessTags[k]; got != want {
						t.Errorf("span %s: process tag %s = %v, want %v", s.SpanID, k, got, want)
					}
				}
			}
			for i, s := range spans[1:] {
				if s.Kind() != "client" || s.Operation != "POST" || s.ParentSpanID != root.SpanID {
					t.Errorf("attempt %d: %s %s parent %s, want a POST client span under %s", i, s.Kind(), s.Operation, s.ParentSpanID, root.SpanID)
				}
				want := map[string]any{
					"sidemesh.upstream": "payments", "sidemesh.lb_policy": "least_request",
					"server.address": "127.0.0.1", "server.port": int64(7001 + i), "url.path": "/charge",
				}
				if i == 0 {
					want["sidemesh.outcome"], want["http.response.status_code"], want["error"] = "retried", int64(503), true
				} else {
					want["sidemesh.outcome"], want["http.response.status_code"], want["http.request.resend_count"] = "ok", int64(200), int64(1)
				}
				for k, w := range want {
					if got := s.Tags[k]; got != w {
						t.Errorf("attempt %d: tag %s = %#v, want %#v", i, k, got, w)
					}
				}
			}
			if exported, dropped := p.Stats(); exported != 3 || dropped != 0 {
				t.Errorf("Stats() = %d exported, %d dropped; want 3, 0", exported, dropped)
			}
		})
	}
}

// blackhole accepts connections and never answers: a hung collector.
func blackhole(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// TestCollectorDownDropsAndNeverBlocks: with the collector refusing or
// hanging, starting and ending spans never waits for an export, and once
// the provider is shut down every span is accounted for as dropped.
//
// The export timeout is an hour, so a span path that waited for the
// exporter would not finish within the minute the test allows it (a bound
// no machine is slow enough to reach otherwise); and spans beyond the queue
// are already counted as dropped, not waited for, when the loop ends.
func TestCollectorDownDropsAndNeverBlocks(t *testing.T) {
	const (
		spans         = 2000
		queueSize     = 64
		exportTimeout = time.Hour
		loopBound     = time.Minute
		shutdownAfter = 2 * time.Second
	)
	for _, tc := range []struct {
		name string
		addr func(t *testing.T) string
		http bool
	}{
		{"grpc-refused", func(t *testing.T) string { return "127.0.0.1:" + strconv.Itoa(testenv.FreePorts(t, 1)[0]) }, false},
		{"grpc-hung", blackhole, false},
		{"http-refused", func(t *testing.T) string { return "127.0.0.1:" + strconv.Itoa(testenv.FreePorts(t, 1)[0]) }, true},
		{"http-hung", blackhole, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			cfg := Config{MaxQueueSize: queueSize, BatchTimeout: 10 * time.Millisecond, ExportTimeout: exportTimeout}
			if tc.http {
				cfg.OTLPHTTPEndpoint = tc.addr(t)
			} else {
				cfg.OTLPEndpoint = tc.addr(t)
			}
			p, err := Setup(ctx, &cfg, Resource{InstanceID: "n1"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			loopDone := make(chan struct{})
			go func() {
				defer close(loopDone)
				h := http.Header{}
				for range spans {
					sctx, span := p.StartClient(ctx, r, Upstream{Service: "api"}, 0)
					SetEndpoint(span, "127.0.0.1:7001")
					p.Inject(sctx, h)
					EndHTTP(span, 200, OutcomeOK)
				}
			}()
			select {
			case <-loopDone:
			case <-time.After(loopBound):
				t.Fatalf("%d span starts and ends not done within %v: the request path waits for the exporter", spans, loopBound)
			}
			if exported, dropped := p.Stats(); exported != 0 || dropped < spans-2*queueSize {
				t.Errorf("after the spans ended: %d exported, %d dropped; want 0 and all but the queue (%d) and one batch in flight dropped at once",
					exported, dropped, queueSize)
			}
			// Shutdown cancels the exports still in flight; their spans
			// count as dropped.
			sctx, cancel := context.WithTimeout(ctx, shutdownAfter)
			defer cancel()
			_ = p.Shutdown(sctx) // the exporter's own shutdown may report the outage
			exported, dropped := p.Stats()
			if exported != 0 || dropped != spans {
				t.Fatalf("Stats() = %d exported, %d dropped; want 0, %d", exported, dropped, spans)
			}
		})
	}
}
