package e2e

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// The tracing tests run the path a traced request takes in a mesh:
//
//	client ──► sidecar A (outbound listener, upstream "b") ──► sidecar B (inbound) ──► app
//
// A learns B's inbound address from a discovery file; the app is an HTTP
// server on 127.0.0.1 that answers with the trace headers it received.

// tracingBatch makes spans reach Jaeger quickly (the default is 5s).
const tracingBatch = "batch_timeout: 100ms"

// tracingApp is the app behind sidecar B: it records the trace headers of
// every request and echoes them in X-Seen-* response headers.
type tracingApp struct {
	*Backend
	mu   sync.Mutex
	seen []http.Header // the trace headers of each request, in arrival order
}

var tracingHeaders = []string{"Traceparent", "Tracestate", "B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Parentspanid", "X-B3-Sampled"}

func startTracingApp(t *testing.T) *tracingApp {
	a := &tracingApp{}
	a.Backend = startBackend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		h := http.Header{}
		for _, k := range tracingHeaders {
			if v, ok := r.Header[k]; ok {
				h[k] = v
				w.Header()["X-Seen-"+k] = v
			}
		}
		a.mu.Lock()
		a.seen = append(a.seen, h)
		a.mu.Unlock()
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	})
	return a
}

func (a *tracingApp) traceparents() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.seen))
	for _, h := range a.seen {
		out = append(out, h.Get("Traceparent"))
	}
	return out
}

// tracingMesh is sidecar A, sidecar B and the app.
type tracingMesh struct {
	A, B     *Sidecar
	URL      string // A's outbound listener for upstream b, as an http:// URL
	App      *tracingApp
	ServiceA string // service.name of A's spans (its node: A has no service block)
	ServiceB string // service.name of B's spans
}

// startTracingMesh starts the app, B and A. tracingA and tracingB are the
// YAML flow maps of each sidecar's tracing block ("" = tracing off); prefix
// keeps the service names of meshes sharing one Jaeger apart.
func startTracingMesh(t *testing.T, prefix, tracingA, tracingB string) *tracingMesh {
	t.Helper()
	m := &tracingMesh{App: startTracingApp(t), ServiceA: prefix + "-a", ServiceB: prefix + "-b"}
	_, appPort, _ := net.SplitHostPort(m.App.Addr)
	inbound := freeAddr(t)
	cfgB := fmt.Sprintf("node: %s-b-1\nservice: {name: %s, port: %s, inbound: %s}\n", prefix, m.ServiceB, appPort, inbound)
	if tracingB != "" {
		cfgB += "tracing: " + tracingB + "\n"
	}
	m.B = startSidecar(t, m.ServiceB, cfgB, true)

	eps := filepath.Join(t.TempDir(), "endpoints.yaml")
	if err := os.WriteFile(eps, fmt.Appendf(nil, "services:\n  b:\n    - {address: %s, weight: 1}\n", inbound), 0o644); err != nil {
		t.Fatal(err)
	}
	out := freeAddr(t)
	cfgA := fmt.Sprintf("node: %s\ndiscovery: {file: %s}\nupstreams:\n  - {service: b, listen: %s}\n", m.ServiceA, eps, out)
	if tracingA != "" {
		cfgA += "tracing: " + tracingA + "\n"
	}
	m.A = startSidecar(t, m.ServiceA, cfgA, true)
	m.URL = "http://" + out
	return m
}

// tracingIDs are a fresh random trace id (32 hex digits) and span id (16).
func tracingIDs(t *testing.T) (traceID, spanID string) {
	t.Helper()
	var b [24]byte
	if _, err := crand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[0] |= 1 // never all zero
	b[16] |= 1
	return hex.EncodeToString(b[:16]), hex.EncodeToString(b[16:])
}

// tracingDo sends one GET with hdr through url and returns the response
// headers; it fails the test on an error or a non-200 status.
func tracingDo(t *testing.T, url string, hdr map[string]string) http.Header {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: status %d", url, resp.StatusCode)
	}
	return resp.Header
}

// tracingTraceparent splits a W3C traceparent into trace id, parent id and
// flags; ok is false when it is malformed.
func tracingTraceparent(v string) (traceID, parentID, flags string, ok bool) {
	p := strings.Split(v, "-")
	if len(p) != 4 || p[0] != "00" || len(p[1]) != 32 || len(p[2]) != 16 || len(p[3]) != 2 {
		return "", "", "", false
	}
	return p[1], p[2], p[3], true
}

// tracingSpans reads sidemesh_tracing_spans_total from a sidecar's /metrics.
func tracingSpans(t testing.TB, s *Sidecar) (exported, dropped int) {
	t.Helper()
	code, body := s.Get(t, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	found := 0
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		var dst *int
		switch {
		case strings.HasPrefix(line, `sidemesh_tracing_spans_total{fate="exported"} `):
			dst = &exported
		case strings.HasPrefix(line, `sidemesh_tracing_spans_total{fate="dropped"} `):
			dst = &dropped
		default:
			continue
		}
		f, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("/metrics: %q: %v", line, err)
		}
		*dst = int(f)
		found++
	}
	if found != 2 {
		t.Fatalf("/metrics has no sidemesh_tracing_spans_total{fate=exported|dropped}:\n%s", body)
	}
	return exported, dropped
}

// tracingWaitSpans waits until a sidecar's span counters read exactly
// exported and dropped.
func tracingWaitSpans(t testing.TB, s *Sidecar, name string, exported, dropped int) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, name+" span counters", func() error {
		e, d := tracingSpans(t, s)
		if e != exported || d != dropped {
			return fmt.Errorf("exported %d dropped %d, want %d and %d", e, d, exported, dropped)
		}
		return nil
	})
}

// tracingJaegerTraceIDs lists every trace id Jaeger holds for service (no
// waiting; a service Jaeger has not seen gives none).
func tracingJaegerTraceIDs(j *testenv.Jaeger, service string) (map[string]bool, error) {
	q := url.Values{"service": {service}, "limit": {"10000"}, "lookback": {"1h"}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.QueryURL()+"/api/traces?"+q.Encode(), nil)
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
	ids := map[string]bool{}
	if resp.StatusCode == http.StatusNotFound {
		return ids, nil
	}
	var r struct {
		Data []struct {
			TraceID string `json:"traceID"`
		} `json:"data"`
		Errors []struct {
			Msg string `json:"msg"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("jaeger /api/traces: %s: %v: %.200s", resp.Status, err, body)
	}
	if resp.StatusCode != 200 || len(r.Errors) > 0 {
		return nil, fmt.Errorf("jaeger /api/traces: %s: %.200s", resp.Status, body)
	}
	for _, tr := range r.Data {
		id := strings.ToLower(tr.TraceID)
		ids[strings.Repeat("0", max(0, 32-len(id)))+id] = true
	}
	return ids, nil
}

// tracingWaitTraceIDs waits until Jaeger holds exactly want for service.
func tracingWaitTraceIDs(t *testing.T, j *testenv.Jaeger, service string, want map[string]bool) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, "jaeger traces of "+service, func() error {
		got, err := tracingJaegerTraceIDs(j, service)
		if err != nil {
			return err
		}
		var missing, extra int
		for id := range want {
			if !got[id] {
				missing++
			}
		}
		for id := range got {
			if !want[id] {
				extra++
			}
		}
		if missing > 0 || extra > 0 {
			return fmt.Errorf("jaeger has %d traces, want %d: %d missing, %d unexpected", len(got), len(want), missing, extra)
		}
		return nil
	})
}

func tracingOnly(spans []testenv.JaegerSpan, service, kind string) testenv.JaegerSpan {
	var out []testenv.JaegerSpan
	for _, s := range spans {
		if s.Service == service && s.Kind() == kind {
			out = append(out, s)
		}
	}
	if len(out) != 1 {
		return testenv.JaegerSpan{}
	}
	return out[0]
}

// TestTracingPropagation sends a request with an incoming trace context
// (W3C, single-header B3, multi-header B3) through A and B to the app, and
// reads the trace back from Jaeger: one trace, A's client span a child of
// the incoming span, B's server span a child of A's client span, and the
// app a child of B's server span, all under the caller's trace id.
func TestTracingPropagation(t *testing.T) {
	j := testenv.StartJaeger(t)
	cfg := fmt.Sprintf("{otlp_endpoint: %s, sampling_ratio: 1, %s}", j.OTLPGRPCAddr(), tracingBatch)
	m := startTracingMesh(t, "prop", cfg, cfg)

	for _, tc := range []struct {
		name string
		hdr  func(traceID, spanID string) map[string]string
	}{
		{"traceparent", func(tid, sid string) map[string]string {
			return map[string]string{"traceparent": "00-" + tid + "-" + sid + "-01"}
		}},
		{"b3-single", func(tid, sid string) map[string]string {
			return map[string]string{"b3": tid + "-" + sid + "-1"}
		}},
		{"b3-multi", func(tid, sid string) map[string]string {
			return map[string]string{"X-B3-TraceId": tid, "X-B3-SpanId": sid, "X-B3-Sampled": "1"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tid, sid := tracingIDs(t)
			seen := tracingDo(t, m.URL+"/orders/42", tc.hdr(tid, sid))

			appTID, appParent, appFlags, ok := tracingTraceparent(seen.Get("X-Seen-Traceparent"))
			if !ok {
				t.Fatalf("app got traceparent %q, want a valid one", seen.Get("X-Seen-Traceparent"))
			}
			if appTID != tid || appFlags != "01" {
				t.Errorf("app saw trace %s flags %s, want trace %s flags 01", appTID, appFlags, tid)
			}
			// B injects the default propagators (tracecontext, baggage,
			// b3multi): B3 must carry the same context as traceparent, and
			// the caller's own B3 headers must not leak through.
			if got := strings.ToLower(seen.Get("X-Seen-X-B3-Traceid")); got != tid {
				t.Errorf("app saw X-B3-TraceId %q, want %s", got, tid)
			}
			if got := strings.ToLower(seen.Get("X-Seen-X-B3-Spanid")); got != appParent {
				t.Errorf("app saw X-B3-SpanId %q, want %s (traceparent's parent)", got, appParent)
			}
			if got := seen.Get("X-Seen-B3"); got != "" {
				t.Errorf("app saw a stale single b3 header %q", got)
			}

			spans := j.Trace(t, tid, 2)
			if len(spans) != 2 {
				t.Fatalf("trace %s has %d spans, want 2 (A client, B server): %+v", tid, len(spans), spans)
			}
			client := tracingOnly(spans, m.ServiceA, "client")
			server := tracingOnly(spans, m.ServiceB, "server")
			if client.SpanID == "" || server.SpanID == "" {
				t.Fatalf("want one client span of %s and one server span of %s, got %+v", m.ServiceA, m.ServiceB, spans)
			}
			if client.ParentSpanID != sid {
				t.Errorf("A's client span parent = %q, want the incoming span %s", client.ParentSpanID, sid)
			}
			if server.ParentSpanID != client.SpanID {
				t.Errorf("B's server span parent = %q, want A's client span %s", server.ParentSpanID, client.SpanID)
			}
			if appParent != server.SpanID {
				t.Errorf("the app's parent span = %s, want B's server span %s", appParent, server.SpanID)
			}
			for _, c := range []struct {
				span testenv.JaegerSpan
				key  string
				want any
			}{
				{client, "http.request.method", "GET"},
				{client, "url.path", "/orders/42"},
				{client, "http.response.status_code", int64(200)},
				{client, "sidemesh.upstream", "b"},
				{client, "sidemesh.outcome", "ok"},
				{server, "http.request.method", "GET"},
				{server, "url.path", "/orders/42"},
				{server, "http.response.status_code", int64(200)},
				{server, "sidemesh.outcome", "ok"},
			} {
				if got := c.span.Tags[c.key]; got != c.want {
					t.Errorf("%s %s span: %s = %v (%T), want %v", c.span.Service, c.span.Kind(), c.key, got, got, c.want)
				}
			}
			if got := client.Tags["server.address"]; got == nil {
				t.Errorf("A's client span has no server.address (the chosen endpoint): %v", client.Tags)
			}
			if got := client.ProcessTags["service.instance.id"]; got != m.ServiceA {
				t.Errorf("A's service.instance.id = %v, want its node %s", got, m.ServiceA)
			}
			if got := server.ProcessTags["service.instance.id"]; got != m.ServiceB+"-1" {
				t.Errorf("B's service.instance.id = %v, want its node %s-1", got, m.ServiceB)
			}
		})
	}

	t.Run("new-trace", func(t *testing.T) {
		// No incoming context: A starts the trace (its client span is the root).
		seen := tracingDo(t, m.URL+"/fresh", nil)
		tid, appParent, flags, ok := tracingTraceparent(seen.Get("X-Seen-Traceparent"))
		if !ok || flags != "01" {
			t.Fatalf("app got traceparent %q, want a sampled one", seen.Get("X-Seen-Traceparent"))
		}
		spans := j.Trace(t, tid, 2)
		client := tracingOnly(spans, m.ServiceA, "client")
		server := tracingOnly(spans, m.ServiceB, "server")
		if len(spans) != 2 || client.SpanID == "" || server.SpanID == "" {
			t.Fatalf("want A's client and B's server span, got %+v", spans)
		}
		if client.ParentSpanID != "" || server.ParentSpanID != client.SpanID || appParent != server.SpanID {
			t.Errorf("links: client parent %q (want root), server parent %q (want %s), app parent %s (want %s)",
				client.ParentSpanID, server.ParentSpanID, client.SpanID, appParent, server.SpanID)
		}
	})
}

// tracingTimedLoad sends n GETs (c concurrent) and returns the latency of
// each successful one and the number of failures.
func tracingTimedLoad(url string, n, c int) ([]time.Duration, int) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	var (
		mu     sync.Mutex
		lat    []time.Duration
		failed int
		wg     sync.WaitGroup
	)
	jobs := make(chan struct{})
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				start := time.Now()
				resp, err := client.Get(url)
				ok := err == nil
				if ok {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					ok = resp.StatusCode == 200
				}
				d := time.Since(start)
				mu.Lock()
				if ok {
					lat = append(lat, d)
				} else {
					failed++
				}
				mu.Unlock()
			}
		}()
	}
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	slices.Sort(lat)
	return lat, failed
}

func tracingPct(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	return lat[min(len(lat)-1, int(p*float64(len(lat))))]
}

// TestTracingCollectorDown: with the collector unreachable (a closed port)
// or hung (accepts TCP, never answers), traffic is unaffected and every
// span is counted as dropped.
func TestTracingCollectorDown(t *testing.T) {
	const n, c = 300, 8
	for _, tc := range []struct {
		name     string
		endpoint func(t *testing.T) string
	}{
		{"closed-port", func(t *testing.T) string { return freeAddr(t) }},
		{"hung", func(t *testing.T) string {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var conns []net.Conn
			go func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					mu.Lock()
					conns = append(conns, conn) // held open, never read
					mu.Unlock()
				}
			}()
			t.Cleanup(func() {
				ln.Close()
				mu.Lock()
				defer mu.Unlock()
				for _, c := range conns {
					c.Close()
				}
			})
			return ln.Addr().String()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fmt.Sprintf("{otlp_endpoint: %s, sampling_ratio: 1, export_timeout: 1s, %s}", tc.endpoint(t), tracingBatch)
			m := startTracingMesh(t, "down", cfg, cfg)
			start := time.Now()
			lat, failed := tracingTimedLoad(m.URL+"/", n, c)
			elapsed := time.Since(start)
			t.Logf("collector %s: %d requests (%d concurrent) in %v (%.0f rps): p50 %v p99 %v max %v, %d failed",
				tc.name, n, c, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(),
				tracingPct(lat, 0.5), tracingPct(lat, 0.99), tracingPct(lat, 1), failed)
			if failed != 0 {
				t.Fatalf("%d of %d requests failed with the collector %s", failed, n, tc.name)
			}
			if got := m.App.Hits.Load(); got != n {
				t.Fatalf("app got %d requests, want %d", got, n)
			}
			// One client span per request in A, one server span in B; all
			// sampled, none exported.
			tracingWaitSpans(t, m.A, "A", 0, n)
			tracingWaitSpans(t, m.B, "B", 0, n)
			// Propagation does not depend on the collector.
			for _, tp := range m.App.traceparents() {
				if _, _, flags, ok := tracingTraceparent(tp); !ok || flags != "01" {
					t.Fatalf("app saw traceparent %q, want a sampled one", tp)
				}
			}
		})
	}
}

// TestTracingSampling: the sampling ratio decides for requests that start a
// trace; an incoming decision (sampled or not) is kept whatever the ratio.
func TestTracingSampling(t *testing.T) {
	j := testenv.StartJaeger(t)
	tracingCfg := func(ratio string) string {
		return fmt.Sprintf("{otlp_endpoint: %s, sampling_ratio: %s, %s}", j.OTLPGRPCAddr(), ratio, tracingBatch)
	}

	t.Run("ratio-0.25", func(t *testing.T) {
		// A samples a quarter of new traces; B (ratio 1) follows A's
		// decision, so it traces exactly the requests A traced.
		const n, ratio = 400, 0.25
		m := startTracingMesh(t, "quarter", tracingCfg("0.25"), tracingCfg("1"))
		if _, failed := load(t, m.URL+"/", n, 4); failed != 0 {
			t.Fatalf("%d of %d requests failed", failed, n)
		}
		tps := m.App.traceparents()
		if len(tps) != n {
			t.Fatalf("app saw %d requests, want %d", len(tps), n)
		}
		sampled := map[string]bool{}
		all := map[string]bool{}
		for _, tp := range tps {
			tid, _, flags, ok := tracingTraceparent(tp)
			if !ok || (flags != "00" && flags != "01") {
				t.Fatalf("app saw traceparent %q", tp)
			}
			all[tid] = true
			if flags == "01" {
				sampled[tid] = true
			}
		}
		if len(all) != n {
			t.Fatalf("%d distinct trace ids over %d new requests", len(all), n)
		}
		// Binomial(n, ratio): accept 5 standard deviations either side
		// (a false failure about once in 1.7 million runs).
		k := len(sampled)
		mean, sd := n*ratio, math.Sqrt(n*ratio*(1-ratio))
		t.Logf("sampling ratio %.2f: %d of %d new traces sampled (expected %.0f ± %.1f, accepted %.0f..%.0f)",
			ratio, k, n, mean, sd, mean-5*sd, mean+5*sd)
		if math.Abs(float64(k)-mean) > 5*sd {
			t.Fatalf("%d of %d sampled with ratio %.2f: outside %.0f ± %.0f", k, n, ratio, mean, 5*sd)
		}
		// Jaeger holds exactly the sampled traces, from both services, and
		// the counters agree.
		tracingWaitTraceIDs(t, j, m.ServiceA, sampled)
		tracingWaitTraceIDs(t, j, m.ServiceB, sampled)
		tracingWaitSpans(t, m.A, "A", k, 0)
		tracingWaitSpans(t, m.B, "B", k, 0)
	})

	t.Run("ratio-0", func(t *testing.T) {
		// A never starts a trace; but a caller's sampled decision (W3C or
		// B3) is kept, by A and by B.
		const n = 50
		m := startTracingMesh(t, "zero", tracingCfg("0"), tracingCfg("0"))
		if _, failed := load(t, m.URL+"/", n, 2); failed != 0 {
			t.Fatalf("%d of %d requests failed", failed, n)
		}
		for _, tp := range m.App.traceparents() {
			if _, _, flags, ok := tracingTraceparent(tp); !ok || flags != "00" {
				t.Fatalf("ratio 0: app saw traceparent %q, want an unsampled one", tp)
			}
		}
		want := map[string]bool{}
		w3c, sid := tracingIDs(t)
		tracingDo(t, m.URL+"/", map[string]string{"traceparent": "00-" + w3c + "-" + sid + "-01"})
		want[w3c] = true
		b3id, sid := tracingIDs(t)
		tracingDo(t, m.URL+"/", map[string]string{"X-B3-TraceId": b3id, "X-B3-SpanId": sid, "X-B3-Sampled": "1"})
		want[b3id] = true
		for id := range want {
			spans := j.Trace(t, id, 2)
			if tracingOnly(spans, m.ServiceA, "client").SpanID == "" || tracingOnly(spans, m.ServiceB, "server").SpanID == "" {
				t.Fatalf("sampled parent with ratio 0: trace %s has %+v, want A's client and B's server span", id, spans)
			}
		}
		// The spans of the sampled requests ended after the n unsampled
		// ones and are exported in order: had any of those been sampled,
		// Jaeger would hold it by now.
		tracingWaitTraceIDs(t, j, m.ServiceA, want)
		tracingWaitTraceIDs(t, j, m.ServiceB, want)
		tracingWaitSpans(t, m.A, "A", 2, 0)
		tracingWaitSpans(t, m.B, "B", 2, 0)
	})

	t.Run("ratio-1-unsampled-parent", func(t *testing.T) {
		// A and B trace everything new, but a caller's "not sampled" is
		// kept: no span anywhere, and the decision reaches the app.
		m := startTracingMesh(t, "one", tracingCfg("1"), tracingCfg("1"))
		w3c, sid := tracingIDs(t)
		seen := tracingDo(t, m.URL+"/", map[string]string{"traceparent": "00-" + w3c + "-" + sid + "-00"})
		if tid, _, flags, ok := tracingTraceparent(seen.Get("X-Seen-Traceparent")); !ok || tid != w3c || flags != "00" {
			t.Errorf("app saw traceparent %q, want trace %s flags 00", seen.Get("X-Seen-Traceparent"), w3c)
		}
		b3id, sid := tracingIDs(t)
		seen = tracingDo(t, m.URL+"/", map[string]string{"b3": b3id + "-" + sid + "-0"})
		if tid, _, flags, ok := tracingTraceparent(seen.Get("X-Seen-Traceparent")); !ok || tid != b3id || flags != "00" {
			t.Errorf("app saw traceparent %q, want trace %s flags 00", seen.Get("X-Seen-Traceparent"), b3id)
		}
		// A control request, sampled by the ratio, is exported after them.
		seen = tracingDo(t, m.URL+"/", nil)
		ctl, _, _, ok := tracingTraceparent(seen.Get("X-Seen-Traceparent"))
		if !ok {
			t.Fatalf("control: app saw traceparent %q", seen.Get("X-Seen-Traceparent"))
		}
		j.Trace(t, ctl, 2)
		for _, id := range []string{w3c, b3id} {
			spans, err := j.TraceNow(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if len(spans) != 0 {
				t.Errorf("unsampled parent with ratio 1: trace %s has %d spans in Jaeger, want none", id, len(spans))
			}
		}
		tracingWaitTraceIDs(t, j, m.ServiceA, map[string]bool{ctl: true})
		tracingWaitSpans(t, m.A, "A", 1, 0)
		tracingWaitSpans(t, m.B, "B", 1, 0)
	})
}

// TestTracingGRPC: a gRPC call through A gets a client span with the RPC
// attributes (rpc.system, rpc.service, rpc.method, rpc.grpc.status_code).
func TestTracingGRPC(t *testing.T) {
	j := testenv.StartJaeger(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)

	eps := filepath.Join(t.TempDir(), "endpoints.yaml")
	if err := os.WriteFile(eps, fmt.Appendf(nil, "services:\n  health:\n    - {address: %s, weight: 1}\n", ln.Addr()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := freeAddr(t)
	cfg := fmt.Sprintf("node: grpc-a\ndiscovery: {file: %s}\nupstreams:\n  - {service: health, listen: %s, protocol: grpc}\n"+
		"tracing: {otlp_endpoint: %s, sampling_ratio: 1, %s}\n", eps, out, j.OTLPGRPCAddr(), tracingBatch)
	startSidecar(t, "grpc-a", cfg, true)

	cc, err := grpc.NewClient(out, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := healthpb.NewHealthClient(cc)

	for _, tc := range []struct {
		service string
		code    codes.Code
	}{
		{"", codes.OK},
		{"no-such-service", codes.NotFound},
	} {
		t.Run(tc.code.String(), func(t *testing.T) {
			tid, sid := tracingIDs(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+tid+"-"+sid+"-01")
			_, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: tc.service})
			if got := status.Code(err); got != tc.code {
				t.Fatalf("Check(%q) = %v, want %v", tc.service, err, tc.code)
			}
			spans := j.Trace(t, tid, 1)
			span := tracingOnly(spans, "grpc-a", "client")
			if len(spans) != 1 || span.SpanID == "" {
				t.Fatalf("want one client span, got %+v", spans)
			}
			if span.ParentSpanID != sid {
				t.Errorf("client span parent %q, want %s", span.ParentSpanID, sid)
			}
			if span.Operation != "grpc.health.v1.Health/Check" {
				t.Errorf("span name %q, want grpc.health.v1.Health/Check", span.Operation)
			}
			for key, want := range map[string]any{
				"rpc.system":                "grpc",
				"rpc.service":               "grpc.health.v1.Health",
				"rpc.method":                "Check",
				"rpc.grpc.status_code":      int64(tc.code),
				"sidemesh.upstream":         "health",
				"network.peer.address":      "127.0.0.1",
				"http.response.status_code": int64(200),
			} {
				if got := span.Tags[key]; got != want {
					t.Errorf("%s = %v (%T), want %v", key, got, got, want)
				}
			}
			isErr, _ := span.Tags["error"].(bool)
			if isErr != (tc.code != codes.OK) {
				t.Errorf("error tag = %v for %v (tags %v)", span.Tags["error"], tc.code, span.Tags)
			}
		})
	}
}

// TestTracingTCP: a TCP connection through A gets a client span (a trace
// of its own: TCP carries no context) with the bytes relayed each way.
func TestTracingTCP(t *testing.T) {
	j := testenv.StartJaeger(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_, _ = io.Copy(conn, conn) // echo until the client half-closes
			}()
		}
	}()
	eps := filepath.Join(t.TempDir(), "endpoints.yaml")
	if err := os.WriteFile(eps, fmt.Appendf(nil, "services:\n  echo:\n    - {address: %s, weight: 1}\n", ln.Addr()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := freeAddr(t)
	cfg := fmt.Sprintf("node: tcp-a\ndiscovery: {file: %s}\nupstreams:\n  - {service: echo, listen: %s, protocol: tcp}\n"+
		"tracing: {otlp_endpoint: %s, sampling_ratio: 1, %s}\n", eps, out, j.OTLPGRPCAddr(), tracingBatch)
	startSidecar(t, "tcp-a", cfg, true)

	conn, err := net.DialTimeout("tcp", out, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	const msg = "ping through the mesh"
	if _, err := io.WriteString(conn, msg); err != nil {
		t.Fatal(err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != msg {
		t.Fatalf("echo through A = %q, %v; want %q", got, err, msg)
	}

	traces := j.FindTraces(t, "tcp-a", 1)
	if len(traces) != 1 || len(traces[0]) != 1 {
		t.Fatalf("want one trace of one span, got %+v", traces)
	}
	span := traces[0][0]
	if span.Kind() != "client" || span.Operation != "tcp echo" || span.ParentSpanID != "" {
		t.Errorf("span %q kind %q parent %q, want a root client span \"tcp echo\"", span.Operation, span.Kind(), span.ParentSpanID)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	for key, want := range map[string]any{
		"network.transport":       "tcp",
		"sidemesh.upstream":       "echo",
		"sidemesh.outcome":        "ok",
		"sidemesh.bytes_sent":     int64(len(msg)),
		"sidemesh.bytes_received": int64(len(msg)),
		"server.address":          "127.0.0.1",
		"server.port":             int64(tracingAtoi(t, port)),
	} {
		if got := span.Tags[key]; got != want {
			t.Errorf("%s = %v (%T), want %v", key, got, got, want)
		}
	}
}

func tracingAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// tracingCPU is the user+system CPU time of the process whose command line
// names cfgPath (a sidecar this test started).
func tracingCPU(cfgPath string) (time.Duration, error) {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, d := range dirs {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmd), cfgPath) {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			return 0, err
		}
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
		utime, _ := strconv.Atoi(f[11]) // fields 14 and 15 of proc(5)
		stime, _ := strconv.Atoi(f[12])
		return time.Duration(utime+stime) * 10 * time.Millisecond, nil // USER_HZ 100
	}
	return 0, errors.New("process not found in /proc")
}

// BenchmarkTracingProxyCost is what tracing adds to the proxy path of the
// real binary: sequential GETs through a sidecar with tracing off, and
// through one that samples every request and exports every span to a real
// Jaeger. Besides ns/op (the client's view) it reports the sidecar
// process's own CPU per request as sidecar-µs/op, read from /proc with a
// 10 ms tick (so run it with -benchtime of a few seconds). Every request
// must succeed and, with tracing on, every span must be exported.
// sidecar's BenchmarkProxyTracing measures the in-process path against a
// collector that discards spans; this one the binary and a real collector.
func BenchmarkTracingProxyCost(b *testing.B) {
	j := testenv.StartJaeger(b)
	backend := startBackend(b, "be", nil)
	eps := filepath.Join(b.TempDir(), "endpoints.yaml")
	if err := os.WriteFile(eps, fmt.Appendf(nil, "services:\n  be:\n    - {address: %s, weight: 1}\n", backend.Addr), 0o644); err != nil {
		b.Fatal(err)
	}
	for _, v := range []struct{ name, node, tracing string }{
		{"tracing=off", "cost-off", ""},
		{"tracing=on", "cost-on", fmt.Sprintf("tracing: {otlp_endpoint: %s, sampling_ratio: 1, %s}\n", j.OTLPGRPCAddr(), tracingBatch)},
	} {
		b.Run(v.name, func(b *testing.B) {
			out := freeAddr(b)
			cfg := fmt.Sprintf("node: %s\ndiscovery: {file: %s}\nupstreams:\n  - {service: be, listen: %s}\n%s", v.node, eps, out, v.tracing)
			sc := startSidecar(b, v.node, cfg, true)
			url := "http://" + out + "/"
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}, Timeout: 10 * time.Second}
			defer client.CloseIdleConnections()
			get := func() {
				resp, err := client.Get(url)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("GET %s: %s", url, resp.Status)
				}
			}
			get() // the connection is open before the measurement
			c0, err := tracingCPU(sc.Config)
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for b.Loop() {
				get()
				n++
			}
			c1, err := tracingCPU(sc.Config)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64((c1-c0).Microseconds())/float64(n), "sidecar-µs/op")
			if v.tracing != "" {
				tracingWaitSpans(b, sc, v.node, n+1, 0)
			}
		})
	}
}
