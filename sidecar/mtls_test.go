package sidecar

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/mtls"
	"github.com/sidemesh/sidemesh/mtls/mtlstest"
)

const testTD = "0f0e0d0c-0b0a-0908-0706-050403020100.consul"

// staticSource publishes fixed snapshots (endpoints with the mesh mark,
// which the file source does not carry).
type staticSource struct{ discovery.Fanout }

func (*staticSource) Close() error { return nil }

func newStatic(t testing.TB, service string, eps ...discovery.Endpoint) *staticSource {
	t.Helper()
	s := &staticSource{}
	snap, err := discovery.NewSnapshot(service, 1, eps)
	if err != nil {
		t.Fatal(err)
	}
	s.Publish(snap)
	return s
}

// startMeshSidecar runs a sidecar with mtls from files for identity (the
// service its certificate names).
func startMeshSidecar(t testing.TB, ca *mtlstest.CA, identity, mode, body string, opts Options) *Sidecar {
	t.Helper()
	dir := t.TempDir()
	cert, key, caf := ca.Files(t, dir, identity)
	if opts.Source != nil { // the config still names a source; Options.Source replaces it
		ep := dir + "/endpoints.yaml"
		writeFile(t, ep, "services: {}\n")
		body = fmt.Sprintf("discovery: {file: %q}\n", ep) + body
	}
	cfgYAML := fmt.Sprintf("admin: 127.0.0.1:0\nmtls: {mode: %s, cert_file: %q, key_file: %q, ca_file: %q}\n%s", mode, cert, key, caf, body)
	cfg, err := Parse("test.yaml", []byte(cfgYAML))
	if err != nil {
		t.Fatal(err)
	}
	return runSidecar(t, cfg, opts)
}

func backendPort(b *backend) int {
	_, p, _ := net.SplitHostPort(b.addr)
	var n int
	fmt.Sscan(p, &n)
	return n
}

// web → api in strict mode: every request is served over mTLS, h1 and h2
// from the client alike; api's inbound refuses plaintext, a TLS client
// without certificate and a certificate of another CA.
func TestMTLSStrictLoopback(t *testing.T) {
	ca := mtlstest.NewCA(t, testTD)
	app := startBackend(t, "api", nil)
	api := startMeshSidecar(t, ca, "api", "strict", fmt.Sprintf("service: {name: api, port: %d, inbound: 127.0.0.1:0}\n", backendPort(app)), Options{})
	src := newStatic(t, "api", discovery.Endpoint{Address: api.InboundAddr(), Weight: 1, MTLS: true})
	web := startMeshSidecar(t, ca, "web", "strict", "upstreams:\n  - {service: api, listen: 127.0.0.1:0}\n", Options{Source: src})

	for _, c := range []*http.Client{h1Client(), h2cClient()} {
		for range 5 {
			resp, body := get(t, c, "http://"+web.UpstreamAddr("api")+"/x")
			if resp.StatusCode != 200 || body != "hello from api" {
				t.Fatalf("through the mesh: %d %q", resp.StatusCode, body)
			}
		}
	}
	if n := app.hits.Load(); n != 10 {
		t.Fatalf("app saw %d requests, want 10", n)
	}
	// The server's certificate carries api's SPIFFE ID; our web leaf is accepted.
	wc, wk := ca.Leaf(t, "web")
	webCert, err := tls.X509KeyPair(wc, wk)
	if err != nil {
		t.Fatal(err)
	}
	pool := func() *tls.Config {
		return &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}
	}
	cfg := pool()
	cfg.Certificates = []tls.Certificate{webCert}
	tc, err := tls.Dial("tcp", api.InboundAddr(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if uris := tc.ConnectionState().PeerCertificates[0].URIs; len(uris) != 1 || uris[0].String() != ca.ID("api") {
		t.Fatalf("server identity %v, want %s", uris, ca.ID("api"))
	}
	tc.Close()

	refused := func(what string, c net.Conn, err error) {
		t.Helper()
		if err != nil {
			return // refused at the handshake
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: api\r\n\r\n"); err != nil {
			return
		}
		b, _ := io.ReadAll(c)
		if strings.Contains(string(b), "hello from api") {
			t.Fatalf("%s reached the app: %q", what, b)
		}
	}
	before := app.hits.Load()
	pc, err := net.Dial("tcp", api.InboundAddr())
	refused("plaintext", pc, err)
	nc, err := tls.Dial("tcp", api.InboundAddr(), pool())
	refused("TLS without a client certificate", nc, err)
	other := mtlstest.NewCA(t, testTD)
	oc, ok := other.Leaf(t, "web")
	otherCert, _ := tls.X509KeyPair(oc, ok)
	cfg = pool()
	cfg.Certificates = []tls.Certificate{otherCert}
	fc, err := tls.Dial("tcp", api.InboundAddr(), cfg)
	refused("a certificate of another CA", fc, err)
	if n := app.hits.Load(); n != before {
		t.Fatalf("refused clients reached the app %d times", n-before)
	}

	// /certs shows the identity and never key material.
	resp, body := get(t, h1Client(), "http://"+api.AdminAddr()+"/certs")
	var v certsView
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &v) != nil || v.Identity != ca.ID("api") || v.Mode != "strict" || len(v.Roots) != 1 || v.Serial == "" {
		t.Fatalf("/certs: %d %s", resp.StatusCode, body)
	}
	if strings.Contains(body, "PRIVATE") || strings.Contains(body, "BEGIN") {
		t.Fatalf("/certs shows key material: %s", body)
	}
	_, metrics := get(t, h1Client(), "http://"+api.AdminAddr()+"/metrics")
	if !strings.Contains(metrics, "sidemesh_mtls_leaf_expiry_seconds ") {
		t.Fatal("no sidemesh_mtls_leaf_expiry_seconds in /metrics")
	}
}

// An impostor registered as api but holding web's valid leaf gets no
// request: the identity mismatch is a connect failure, retried on the real
// api, and counted.
func TestMTLSImpostorRefused(t *testing.T) {
	ca := mtlstest.NewCA(t, testTD)
	app := startBackend(t, "api", nil)
	bad := startBackend(t, "impostor", nil)
	api := startMeshSidecar(t, ca, "api", "strict", fmt.Sprintf("service: {name: api, port: %d, inbound: 127.0.0.1:0}\n", backendPort(app)), Options{})
	imp := startMeshSidecar(t, ca, "web", "strict", fmt.Sprintf("service: {name: api, port: %d, inbound: 127.0.0.1:0}\n", backendPort(bad)), Options{})
	src := newStatic(t, "api",
		discovery.Endpoint{Address: api.InboundAddr(), Weight: 1, MTLS: true},
		discovery.Endpoint{Address: imp.InboundAddr(), Weight: 1, MTLS: true})
	web := startMeshSidecar(t, ca, "web", "strict", "upstreams:\n  - {service: api, listen: 127.0.0.1:0, lb_policy: round_robin}\n", Options{Source: src})
	const n = 20
	for i := range n {
		resp, body := get(t, h1Client(), "http://"+web.UpstreamAddr("api")+"/x")
		if resp.StatusCode != 200 || body != "hello from api" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if h := bad.hits.Load(); h != 0 {
		t.Fatalf("the impostor's app got %d requests", h)
	}
	if got := testutil.ToFloat64(web.mesh.originFail.WithLabelValues("api", "identity")); got < 1 {
		t.Fatalf("identity mismatches counted %v, want ≥ 1", got)
	}
}

// Permissive serves mTLS and plaintext clients and counts the plaintext
// connections.
func TestMTLSPermissive(t *testing.T) {
	ca := mtlstest.NewCA(t, testTD)
	app := startBackend(t, "api", nil)
	api := startMeshSidecar(t, ca, "api", "permissive", fmt.Sprintf("service: {name: api, port: %d, inbound: 127.0.0.1:0}\n", backendPort(app)), Options{})
	src := newStatic(t, "api", discovery.Endpoint{Address: api.InboundAddr(), Weight: 1, MTLS: true})
	web := startMeshSidecar(t, ca, "web", "strict", "upstreams:\n  - {service: api, listen: 127.0.0.1:0}\n", Options{Source: src})
	if resp, body := get(t, h1Client(), "http://"+web.UpstreamAddr("api")+"/x"); resp.StatusCode != 200 || body != "hello from api" {
		t.Fatalf("mTLS client: %d %q", resp.StatusCode, body)
	}
	plain := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	for range 3 {
		if resp, body := get(t, plain, "http://"+api.InboundAddr()+"/x"); resp.StatusCode != 200 || body != "hello from api" {
			t.Fatalf("plaintext client: %d %q", resp.StatusCode, body)
		}
	}
	if got := testutil.ToFloat64(api.mesh.plaintext); got != 3 {
		t.Fatalf("plaintext connections counted %v, want 3", got)
	}
}

func TestMTLSConfigErrors(t *testing.T) {
	cases := []struct{ yaml, want string }{
		{"mtls: {mode: strict}\nservice: {name: a, port: 1, inbound: 127.0.0.1:0}\n", "mtls.mode"},
		{"mtls: {mode: sometimes}\n", "mtls.mode"},
		{"mtls: {mode: strict, cert_file: a.crt}\n", "mtls.key_file"},
		{"xds_server: {listen: 127.0.0.1:0, tls: {cert_file: a, key_file: b}}\n", "xds_server.tls.ca_file"},
	}
	for _, c := range cases {
		_, err := Parse("test.yaml", []byte("admin: 127.0.0.1:0\n"+c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one naming %s", c.yaml, err, c.want)
		}
	}
	cfg, err := Parse("test.yaml", []byte("admin: 127.0.0.1:0\n"))
	if err != nil || cfg.MTLS.Mode != mtls.ModeOff {
		t.Fatalf("default mtls.mode: %v, %v", cfg, err)
	}
}

// gRPC between two sidecars over mTLS: origination negotiates h2 by ALPN
// and the inbound serves HTTP/2 over TLS, trailers included.
func TestMTLSGRPC(t *testing.T) {
	ca := mtlstest.NewCA(t, testTD)
	addr := startGRPCBackend(t)
	_, port, _ := net.SplitHostPort(addr)
	api := startMeshSidecar(t, ca, "api", "strict", fmt.Sprintf("service: {name: api, port: %s, protocol: grpc, inbound: 127.0.0.1:0}\n", port), Options{})
	src := newStatic(t, "api", discovery.Endpoint{Address: api.InboundAddr(), Weight: 1, MTLS: true})
	web := startMeshSidecar(t, ca, "web", "strict", "upstreams:\n  - {service: api, listen: 127.0.0.1:0, protocol: grpc}\n", Options{Source: src})
	cc, err := grpc.NewClient(web.UpstreamAddr("api"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var tr metadata.MD
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "up"}, grpc.Trailer(&tr))
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC through two sidecars over mTLS: %v %v", resp, err)
	}
	if got := tr.Get("x-trailer"); len(got) != 1 || got[0] != "t-up" {
		t.Fatalf("trailer = %v", got)
	}
}
