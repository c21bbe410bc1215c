package sidecar

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
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

const oneUpstream = `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
`

func TestHTTP1ProxyHeaders(t *testing.T) {
	b := startBackend(t, "b1", nil)
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", b.addr, 1))
	resp, body := get(t, h1Client(), "http://"+s.UpstreamAddr("api")+"/x?y=1",
		"Connection", "X-Hop", "X-Hop", "secret", "X-Keep", "yes")
	if resp.StatusCode != 200 || body != "hello from b1" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	r := b.lastRequest()
	if r.URL.RequestURI() != "/x?y=1" {
		t.Errorf("path = %q", r.URL.RequestURI())
	}
	if r.Header.Get("X-Hop") != "" {
		t.Error("hop-by-hop header named in Connection was forwarded")
	}
	if r.Header.Get("X-Keep") != "yes" {
		t.Error("end-to-end header dropped")
	}
	if r.Header.Get("X-Forwarded-For") != "127.0.0.1" || r.Header.Get("X-Forwarded-Proto") != "http" {
		t.Errorf("X-Forwarded-For=%q -Proto=%q", r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"))
	}
	if id := r.Header.Get("X-Request-Id"); len(id) != 36 || id[14] != '4' {
		t.Errorf("x-request-id = %q, want a UUIDv4", id)
	}
	if r.Header.Get("X-Sidemesh-Attempt-Count") != "1" {
		t.Errorf("attempt count = %q", r.Header.Get("X-Sidemesh-Attempt-Count"))
	}
	// An existing request id is kept.
	get(t, h1Client(), "http://"+s.UpstreamAddr("api")+"/", "X-Request-Id", "abc")
	if got := b.lastRequest().Header.Get("X-Request-Id"); got != "abc" {
		t.Errorf("x-request-id = %q, want abc", got)
	}
}

func TestH2CProxy(t *testing.T) {
	b := startBackend(t, "b1", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "proto=%d", r.ProtoMajor)
	})
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", b.addr, 1))
	resp, body := get(t, h2cClient(), "http://"+s.UpstreamAddr("api")+"/")
	if resp.ProtoMajor != 2 || body != "proto=2" {
		t.Fatalf("downstream proto %d, body %q", resp.ProtoMajor, body)
	}
	// HTTP/1.1 on the same port goes upstream as HTTP/1.1.
	_, body = get(t, h1Client(), "http://"+s.UpstreamAddr("api")+"/")
	if body != "proto=1" {
		t.Fatalf("body %q", body)
	}
}

func TestWeightedSplitThroughProxy(t *testing.T) {
	var bs []*backend
	for i := 0; i < 3; i++ {
		bs = append(bs, startBackend(t, fmt.Sprint("b", i), nil))
	}
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", bs[0].addr, 1, bs[1].addr, 3, bs[2].addr, 6))
	c := h1Client()
	const n = 1000
	for i := 0; i < n; i++ {
		resp, _ := get(t, c, "http://"+s.UpstreamAddr("api")+"/")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	// round_robin is exact over each cycle of 10.
	for i, w := range []int64{1, 3, 6} {
		if got := bs[i].hits.Load(); got != w*n/10 {
			t.Errorf("backend %d (weight %d): %d hits, want %d", i, w, got, w*n/10)
		}
	}
}

// grpc: unary and server streaming through a grpc upstream, status and
// trailers intact.
type trailerHealth struct {
	healthpb.UnimplementedHealthServer
	inner *health.Server
}

func (h *trailerHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	_ = grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "t-"+req.Service))
	return h.inner.Check(ctx, req)
}

func (h *trailerHealth) Watch(req *healthpb.HealthCheckRequest, s healthpb.Health_WatchServer) error {
	for i := 0; i < 5; i++ {
		if err := s.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
			return err
		}
	}
	s.SetTrailer(metadata.Pairs("x-trailer", "stream-done"))
	return status.Error(codes.ResourceExhausted, "enough")
}

func startGRPCBackend(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("up", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, &trailerHealth{inner: hs})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

func TestGRPCProxy(t *testing.T) {
	addr := startGRPCBackend(t)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - {service: api, listen: 127.0.0.1:0, protocol: grpc}
`, endpointsYAML("api", addr, 1))
	cc, err := grpc.NewClient(s.UpstreamAddr("api"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var tr metadata.MD
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "up"}, grpc.Trailer(&tr))
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("unary: %v %v", resp, err)
	}
	if got := tr.Get("x-trailer"); len(got) != 1 || got[0] != "t-up" {
		t.Fatalf("unary trailer = %v", got)
	}
	_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("unary error status = %v, want NotFound", err)
	}

	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "up"})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		_, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != "enough" {
				t.Fatalf("stream end = %v", err)
			}
			break
		}
		n++
	}
	if n != 5 {
		t.Fatalf("stream messages = %d", n)
	}
	if got := stream.Trailer().Get("x-trailer"); len(got) != 1 || got[0] != "stream-done" {
		t.Fatalf("stream trailer = %v", got)
	}
}

// TCP: 1 MiB echo with half-close.
func TestTCPEchoHalfClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				data, _ := io.ReadAll(c) // until the client's half-close
				_, _ = c.Write(data)
			}()
		}
	}()
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - {service: echo, listen: 127.0.0.1:0, protocol: tcp}
`, endpointsYAML("echo", ln.Addr().String(), 1))
	conn, err := net.Dial("tcp", s.UpstreamAddr("echo"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := make([]byte, 1<<20)
	_, _ = rand.Read(payload)
	go func() {
		_, _ = conn.Write(payload)
		_ = conn.(*net.TCPConn).CloseWrite()
	}()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo mismatch: got %d bytes", len(got))
	}
}

func TestLocalReplies(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	var canceled atomic.Int64
	slow := startBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			canceled.Add(1)
		case <-hang:
		}
	})
	deadAddr := testenv.RefusedAddr(t)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - {service: slow, listen: 127.0.0.1:0, timeout: 200ms}
  - {service: dead, listen: 127.0.0.1:0, connect_timeout: 1s}
  - {service: none, listen: 127.0.0.1:0}
`, endpointsYAML("slow", slow.addr, 1)+"  dead:\n    - {address: "+deadAddr+", weight: 1}\n  none: []\n")
	c := h1Client()
	resp, body := get(t, c, "http://"+s.UpstreamAddr("slow")+"/")
	if resp.StatusCode != 504 || body != "upstream request timeout" {
		t.Errorf("timeout: %d %q", resp.StatusCode, body)
	}
	eventually(t, 5*time.Second, "upstream request canceled after timeout", func() bool { return canceled.Load() == 1 })

	resp, body = get(t, c, "http://"+s.UpstreamAddr("dead")+"/")
	if resp.StatusCode != 503 || !strings.Contains(body, "connection failure") {
		t.Errorf("connect failure: %d %q", resp.StatusCode, body)
	}
	resp, body = get(t, c, "http://"+s.UpstreamAddr("none")+"/")
	if resp.StatusCode != 503 || body != "no healthy upstream" {
		t.Errorf("no endpoints: %d %q", resp.StatusCode, body)
	}

	// The client goes away: the upstream request is canceled too.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+s.UpstreamAddr("slow")+"/", nil)
	errc := make(chan error, 1)
	before := slow.hits.Load()
	go func() { _, err := c.Do(req); errc <- err }()
	eventually(t, 5*time.Second, "request reached backend", func() bool { return slow.hits.Load() > before })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("client err = %v", err)
	}
	eventually(t, 5*time.Second, "upstream request canceled with the client", func() bool { return canceled.Load() == 2 })
}

// The endpoints file edited under load: no failed request, a removed
// endpoint gets no new traffic once the cluster has dropped it, a broken
// file keeps serving.
func TestEndpointsFileEditedUnderLoad(t *testing.T) {
	b1 := startBackend(t, "b1", nil)
	b2 := startBackend(t, "b2", nil)
	b3 := startBackend(t, "b3", nil)
	s, ep := startSidecar(t, oneUpstream, endpointsYAML("api", b1.addr, 1, b2.addr, 1))
	url := "http://" + s.UpstreamAddr("api") + "/"
	c := h1Client()
	var failed, total atomic.Int64
	var firstFail atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000; i++ { // bounded
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get(url)
				total.Add(1)
				if err != nil {
					failed.Add(1)
					firstFail.CompareAndSwap(nil, err.Error())
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					firstFail.CompareAndSwap(nil, resp.Status)
				}
			}
		}()
	}
	waitHits := func(b *backend, n int64) {
		start := b.hits.Load()
		eventually(t, 10*time.Second, b.name+" gets traffic", func() bool { return b.hits.Load() >= start+n })
	}
	waitHits(b2, 50)
	// Add b3, remove b2.
	writeFile(t, ep, endpointsYAML("api", b1.addr, 1, b3.addr, 1))
	waitHits(b3, 50)
	// Once the cluster has dropped b2, b2 gets at most the requests already
	// on their way (one per worker, and one per worker picked in the
	// instant between the host list and the picker swap), then none.
	eventually(t, 10*time.Second, "b2 dropped from the cluster", func() bool {
		for _, e := range clusterStatus(t, s, "api").Endpoints {
			if e.Address == b2.addr {
				return false
			}
		}
		return true
	})
	h0 := b2.hits.Load()
	waitHits(b3, 50)
	h1 := b2.hits.Load()
	if h1-h0 > 8 {
		t.Errorf("removed endpoint got %d requests after it left the cluster", h1-h0)
	}
	waitHits(b3, 50)
	if h := b2.hits.Load(); h != h1 {
		t.Errorf("removed endpoint still gets traffic: %d more requests", h-h1)
	}
	// A broken file keeps serving with the last good endpoints.
	writeFile(t, ep, "services:\n  api:\n    - {address: nope}\n")
	waitHits(b1, 50)
	waitHits(b3, 50)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed (first: %v)", failed.Load(), total.Load(), firstFail.Load())
	}
	t.Logf("%d requests, none failed", total.Load())
}

func TestAdminEndpoints(t *testing.T) {
	b := startBackend(t, "b1", nil)
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", b.addr, 7))
	c := h1Client()
	get(t, c, "http://"+s.UpstreamAddr("api")+"/")
	admin := "http://" + s.AdminAddr()
	resp, body := get(t, c, admin+"/ready")
	if resp.StatusCode != 200 {
		t.Fatalf("/ready = %d %s", resp.StatusCode, body)
	}
	_, body = get(t, c, admin+"/clusters")
	var cl struct {
		Clusters []struct {
			Name      string `json:"name"`
			Endpoints []struct {
				Address  string `json:"address"`
				Weight   int    `json:"weight"`
				Health   string `json:"health"`
				RqTotal  int    `json:"rq_total"`
				RqError  *int   `json:"rq_error"`
				RqActive *int   `json:"rq_active"`
				CxActive *int   `json:"cx_active"`
				Ej       *int   `json:"ejections_total"`
			} `json:"endpoints"`
		} `json:"clusters"`
	}
	if err := json.Unmarshal([]byte(body), &cl); err != nil {
		t.Fatal(err, body)
	}
	if len(cl.Clusters) != 1 || len(cl.Clusters[0].Endpoints) != 1 {
		t.Fatalf("clusters: %s", body)
	}
	e := cl.Clusters[0].Endpoints[0]
	if e.Address != b.addr || e.Weight != 7 || e.Health != "healthy" || e.RqTotal != 1 ||
		e.RqError == nil || e.RqActive == nil || e.CxActive == nil || e.Ej == nil {
		t.Fatalf("endpoint: %+v (%s)", e, body)
	}
	_, body = get(t, c, admin+"/config_dump")
	var dump map[string]any
	if err := json.Unmarshal([]byte(body), &dump); err != nil {
		t.Fatal(err)
	}
	ups := dump["config"].(map[string]any)["upstreams"].([]any)[0].(map[string]any)
	if ups["connect_timeout"] != "5s" || ups["lb_policy"] != "round_robin" || ups["timeout"] != "15s" {
		t.Fatalf("config_dump defaults: %v", ups)
	}
	_, body = get(t, c, admin+"/metrics")
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !strings.HasPrefix(line, "sidemesh_") && !strings.HasPrefix(line, "go_") && !strings.HasPrefix(line, "process_") {
			t.Fatalf("metric without sidemesh_ (or the runtime's go_, process_) prefix: %s", line)
		}
	}
	for _, want := range []string{`sidemesh_upstream_rq_total{class="2xx",upstream="api"} 1`,
		"sidemesh_upstream_rq_duration_seconds_bucket", "sidemesh_upstream_rq_active", "sidemesh_upstream_cx_active"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
