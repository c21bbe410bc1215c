package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/internal/testenv"
	"github.com/sidemesh/sidemesh/mtls/mtlstest"
)

// The zero-trust end-to-end tests: sidecars in network-namespace pods, one
// real Consul agent (Connect on in -dev mode) as the CA and the intentions
// store, mtls.mode strict.

// Ports inside the pods (each pod is its own host).
const (
	meshAdmin    = 15000
	meshInbound  = 15006
	meshOutbound = 15001
	meshApp      = 9000
)

// intentionBound is how fast an intention change must take effect.
const intentionBound = 10 * time.Second

// meshPod is a pod running an app (optional) and a sidecar.
type meshPod struct {
	pod     *testenv.Pod
	proc    *testenv.Process
	client  *http.Client // dials from inside the pod
	appHits atomic.Int64
	alog    string // the sidecar's access log file, when it has one
}

// startMeshApp serves "hello from NAME" on 127.0.0.1:meshApp in the pod.
func startMeshApp(t *testing.T, mp *meshPod, name string) {
	t.Helper()
	ln, err := mp.pod.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", meshApp))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mp.appHits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "hello from %s", name)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// startMeshSidecar runs `sidemesh run` in pod with the config body (admin,
// discovery and node are added) and waits for /ready.
func startMeshSidecar(t *testing.T, mp *meshPod, consul *testenv.Consul, node, body string) {
	t.Helper()
	cfg := fmt.Sprintf("node: %s\nadmin: 127.0.0.1:%d\ndiscovery: {consul: {address: %q}}\n%s", node, meshAdmin, consul.Addr(), body)
	dir := testenv.ReadableTempDir(t)
	path := filepath.Join(dir, node+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	mp.proc = mp.pod.StartProcess(t, node, testenv.ProcOpts{}, sidemeshBin(t), "run", "-c", path)
	mp.proc.WaitReady(60*time.Second, func() error {
		code, body, err := mp.get(fmt.Sprintf("http://127.0.0.1:%d/ready", meshAdmin))
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("/ready = %d %s", code, body)
		}
		return nil
	})
}

func (mp *meshPod) get(url string) (int, string, error) {
	resp, err := mp.client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func newMeshPod(t *testing.T, pods *testenv.Pods, name string) *meshPod {
	p := pods.Add(name)
	return &meshPod{pod: p, client: p.HTTPClient(t)}
}

type certsJSON struct {
	Mode     string `json:"mode"`
	Identity string `json:"identity"`
	Serial   string `json:"serial"`
	Roots    []struct {
		ID     string `json:"id"`
		Active bool   `json:"active"`
	} `json:"roots"`
}

func (mp *meshPod) certs(t *testing.T) certsJSON {
	t.Helper()
	code, body, err := mp.get(fmt.Sprintf("http://127.0.0.1:%d/certs", meshAdmin))
	if err != nil || code != 200 {
		t.Fatalf("/certs: %d %v", code, err)
	}
	if strings.Contains(body, "PRIVATE KEY") {
		t.Fatalf("/certs shows key material")
	}
	var v certsJSON
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("/certs: %v: %s", err, body)
	}
	return v
}

// meshMesh is web → api in strict mode, with a Consul agent and an outsider
// pod with no sidecar.
type meshMesh struct {
	consul             *testenv.Consul
	cc                 *api.Client
	api, web, outsider *meshPod
	td                 string
}

func startMesh(t *testing.T) *meshMesh {
	t.Helper()
	pods := testenv.NewPods(t)
	m := &meshMesh{}
	cpod := pods.Add("consul")
	m.consul = testenv.StartConsul(t, testenv.ConsulInPod(cpod))
	m.cc = m.consul.Client(t)
	m.api, m.web, m.outsider = newMeshPod(t, pods, "api"), newMeshPod(t, pods, "web"), newMeshPod(t, pods, "outsider")
	startMeshApp(t, m.api, "api")
	m.api.alog = filepath.Join(testenv.ReadableTempDir(t), "access.log")
	startMeshSidecar(t, m.api, m.consul, "api-1", fmt.Sprintf(
		"service: {name: api, port: %d, inbound: \"0.0.0.0:%d\", address: %s}\nmtls: {mode: strict}\naccess_log: {path: %q}\n",
		meshApp, meshInbound, m.api.pod.IP, m.api.alog))
	startMeshSidecar(t, m.web, m.consul, "web-1", fmt.Sprintf(
		"service: {name: web, port: %d, inbound: \"0.0.0.0:%d\", address: %s}\nmtls: {mode: strict}\nupstreams:\n  - {service: api, listen: \"127.0.0.1:%d\"}\n",
		meshApp, meshInbound, m.web.pod.IP, meshOutbound))
	roots, _, err := m.cc.Agent().ConnectCARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	m.td = roots.TrustDomain
	// api's instance turns healthy at its first passing Consul check.
	testenv.Eventually(t, 30*time.Second, "web reaches api", func() error {
		code, body, _, err := m.viaWeb("/")
		if err != nil || code != 200 {
			return fmt.Errorf("%d %q %v", code, body, err)
		}
		return nil
	})
	return m
}

func (m *meshMesh) viaWeb(path string) (int, string, http.Header, error) {
	resp, err := m.web.client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", meshOutbound, path))
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header, err
}

// h2cClient speaks HTTP/2 with prior knowledge, dialing from inside the pod.
func (p *meshPod) h2cClient(t *testing.T) *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{DialContext: p.pod.DialContext, Protocols: &protos}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

func (m *meshMesh) apiInbound() string { return m.api.pod.Addr(meshInbound) }

// dialAPI opens a TLS connection to api's inbound from the outsider pod.
func (m *meshMesh) dialAPI(cfg *tls.Config) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := m.outsider.pod.DialContext(ctx, "tcp", m.apiInbound())
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, cfg)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// served reports whether a request on c reaches api's app.
func served(c net.Conn) bool {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"); err != nil {
		return false
	}
	b, _ := io.ReadAll(c)
	return strings.Contains(string(b), "hello from api")
}

func TestMTLSStrictAcrossPods(t *testing.T) {
	m := startMesh(t)
	for i := range 50 {
		code, body, _, err := m.viaWeb("/x")
		if err != nil || code != 200 || body != "hello from api" {
			t.Fatalf("request %d: %d %q %v", i, code, body, err)
		}
	}
	wantID := "spiffe://" + m.td + "/ns/default/dc/dc1/svc/api"
	if id := m.api.certs(t).Identity; id != wantID {
		t.Fatalf("api /certs identity %q, want %q", id, wantID)
	}
	// The server's certificate carries api's SPIFFE ID (TLS 1.3: the client
	// sees it before the server asks for the client's).
	c, err := m.dialAPI(&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err == nil {
		uris := c.ConnectionState().PeerCertificates[0].URIs
		if len(uris) != 1 || uris[0].String() != wantID {
			t.Fatalf("server certificate URIs %v, want %s", uris, wantID)
		}
		if served(c) {
			t.Fatal("a TLS client without certificate reached api's app")
		}
	}
	// Plaintext from a pod with no sidecar.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := m.api.appHits.Load()
	if pc, err := m.outsider.pod.DialContext(ctx, "tcp", m.apiInbound()); err == nil && served(pc) {
		t.Fatal("plaintext reached api's app")
	}
	// A certificate of another CA naming web in the same trust domain.
	other := mtlstest.NewCA(t, m.td)
	oc, ok := other.Leaf(t, "web")
	cert, err := tls.X509KeyPair(oc, ok)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := m.dialAPI(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}}); err == nil && served(c) {
		t.Fatal("a certificate of another CA reached api's app")
	}
	if n := m.api.appHits.Load() - before; n != 0 {
		t.Fatalf("refused clients reached the app %d times", n)
	}
	// A Consul leaf of web is accepted (any holder of a mesh leaf is served).
	leaf, _, err := m.cc.Agent().ConnectCALeaf("web", nil)
	if err != nil {
		t.Fatal(err)
	}
	wcert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	c, err = m.dialAPI(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{wcert}, NextProtos: []string{"http/1.1"}})
	if err != nil || !served(c) {
		t.Fatalf("a client with web's Consul leaf was not served: %v", err)
	}
}

func TestMTLSImpostorAcrossPods(t *testing.T) {
	m := startMesh(t)
	// The impostor registers as api but holds web's (valid) leaf.
	leaf, _, err := m.cc.Agent().ConnectCALeaf("web", nil)
	if err != nil {
		t.Fatal(err)
	}
	roots, _, err := m.cc.Agent().ConnectCARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := testenv.ReadableTempDir(t)
	var bundle strings.Builder
	for _, r := range roots.Roots {
		bundle.WriteString(r.RootCertPEM)
		bundle.WriteString("\n")
	}
	files := map[string]string{"web.crt": leaf.CertPEM, "web.key": leaf.PrivateKeyPEM, "ca.crt": bundle.String()}
	for n, s := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pods := m.outsider.pod // a fresh pod would do; the outsider has room for one more sidecar
	imp := &meshPod{pod: pods, client: m.outsider.client}
	startMeshApp(t, imp, "impostor")
	startMeshSidecar(t, imp, m.consul, "impostor-1", fmt.Sprintf(
		"service: {name: api, port: %d, inbound: \"0.0.0.0:%d\", address: %s}\nmtls: {mode: strict, cert_file: %q, key_file: %q, ca_file: %q}\n",
		meshApp, meshInbound, imp.pod.IP, filepath.Join(dir, "web.crt"), filepath.Join(dir, "web.key"), filepath.Join(dir, "ca.crt")))
	// Wait until web knows both instances, the impostor healthy (a
	// Consul-critical instance is listed but never picked).
	testenv.Eventually(t, 15*time.Second, "web sees two healthy api instances", func() error {
		_, body, err := m.web.get(fmt.Sprintf("http://127.0.0.1:%d/clusters", meshAdmin))
		if err != nil {
			return err
		}
		var v struct {
			Clusters []struct {
				Endpoints []struct{ Address, Health string } `json:"endpoints"`
			} `json:"clusters"`
		}
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			return err
		}
		for _, c := range v.Clusters {
			for _, ep := range c.Endpoints {
				if ep.Address == imp.pod.Addr(meshInbound) && ep.Health == "healthy" {
					return nil
				}
			}
		}
		return fmt.Errorf("impostor not healthy in /clusters")
	})
	for i := range 40 {
		code, body, _, err := m.viaWeb("/x")
		if err != nil || code != 200 || body != "hello from api" {
			t.Fatalf("request %d: %d %q %v", i, code, body, err)
		}
	}
	if n := imp.appHits.Load(); n != 0 {
		t.Fatalf("the impostor's app got %d requests", n)
	}
	v, ok := consulMetricPod(t, m.web, `sidemesh_mtls_origination_failures_total{reason="identity",upstream="api"}`)
	if !ok || v < 1 {
		t.Fatalf("identity mismatches counted %v (present %v), want ≥ 1", v, ok)
	}
}

// consulMetricPod reads one sample of a pod's /metrics.
func consulMetricPod(t *testing.T, mp *meshPod, sample string) (float64, bool) {
	t.Helper()
	_, body, err := mp.get(fmt.Sprintf("http://127.0.0.1:%d/metrics", meshAdmin))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f, true
		}
	}
	return 0, false
}

func TestMTLSIntentionsAcrossPods(t *testing.T) {
	m := startMesh(t)
	if code, _, _, err := m.viaWeb("/x"); err != nil || code != 200 {
		t.Fatalf("before any intention: %d %v", code, err)
	}
	// api speaks HTTP (L7 intentions need it).
	if _, _, err := m.cc.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", Protocol: "http"}, nil); err != nil {
		t.Fatal(err)
	}
	set := func(src *api.SourceIntention) {
		t.Helper()
		if _, _, err := m.cc.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "api", Sources: []*api.SourceIntention{src}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Deny web → api.
	set(&api.SourceIntention{Name: "web", Action: api.IntentionActionDeny})
	testenv.Eventually(t, intentionBound, "deny intention applied", func() error {
		code, _, _, err := m.viaWeb("/x")
		if err != nil || code != 403 {
			return fmt.Errorf("%d %v", code, err)
		}
		return nil
	})
	before := m.api.appHits.Load()
	for range 10 {
		code, body, hdr, err := m.viaWeb("/x")
		if err != nil || code != 403 || hdr.Get("x-sidemesh-local-reply") != "true" || !strings.Contains(body, "/svc/web") || !strings.Contains(body, "api") {
			t.Fatalf("denied request: %d %q %v %v", code, body, hdr, err)
		}
	}
	// The same over HTTP/2: h2c to web's outbound, the frame relay both
	// sides, h2 by ALPN over mTLS to api's inbound, where the relay checks
	// the caller's identity on each stream.
	h2 := m.web.h2cClient(t)
	for range 3 {
		resp, err := h2.Get(fmt.Sprintf("http://127.0.0.1:%d/x", meshOutbound))
		if err != nil {
			t.Fatalf("denied HTTP/2 request: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != 403 || resp.Header.Get("x-sidemesh-local-reply") != "true" || !strings.Contains(string(body), "/svc/web") {
			t.Fatalf("denied HTTP/2 request: HTTP/%d %d %q %v", resp.ProtoMajor, resp.StatusCode, body, resp.Header)
		}
	}
	if n := m.api.appHits.Load() - before; n != 0 {
		t.Fatalf("%d denied requests reached api's app", n)
	}
	if v, ok := consulMetricPod(t, m.api, `sidemesh_authz_decisions_total{result="deny"}`); !ok || v < 10 {
		t.Fatalf("deny decisions counted %v", v)
	}
	// The decisions are in api's access log, with the source's identity.
	testenv.Eventually(t, 10*time.Second, "denied requests in the access log", func() error {
		data, err := os.ReadFile(m.api.alog)
		if err != nil {
			return err
		}
		denied := 0
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var e struct {
				Status int    `json:"status"`
				Source string `json:"source_identity"`
				Authz  string `json:"authz"`
			}
			if json.Unmarshal([]byte(line), &e) == nil && e.Authz == "deny" && e.Status == 403 && strings.HasSuffix(e.Source, "/svc/web") {
				denied++
			}
		}
		if denied < 10 {
			return fmt.Errorf("%d denied lines naming web", denied)
		}
		return nil
	})
	// Delete it: traffic flows again.
	if _, err := m.cc.ConfigEntries().Delete(api.ServiceIntentions, "api", nil); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, intentionBound, "deleted intention lifted", func() error {
		code, _, _, err := m.viaWeb("/x")
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v", code, err)
		}
		return nil
	})
	// L7: deny /admin only.
	set(&api.SourceIntention{Name: "web", Permissions: []*api.IntentionPermission{
		{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/admin"}},
		{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/"}},
	}})
	testenv.Eventually(t, intentionBound, "L7 intention applied", func() error {
		code, _, _, err := m.viaWeb("/admin/users")
		if err != nil || code != 403 {
			return fmt.Errorf("%d %v", code, err)
		}
		return nil
	})
	if code, body, _, err := m.viaWeb("/public"); err != nil || code != 200 || body != "hello from api" {
		t.Fatalf("an allowed path under the L7 intention: %d %q %v", code, body, err)
	}
}

// CA rotation under load: a new Consul-provider root; zero failed requests,
// and afterwards api serves a chain that leads to the new root.
func TestMTLSRotationUnderLoad(t *testing.T) {
	m := startMesh(t)
	old := m.api.certs(t)
	var (
		stop     atomic.Bool
		ok, fail atomic.Int64
		wg       sync.WaitGroup
		firstErr atomic.Value
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				code, body, _, err := m.viaWeb("/x")
				if err != nil || code != 200 || body != "hello from api" {
					fail.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %q %v", code, body, err))
					continue
				}
				ok.Add(1)
			}
		}()
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	if _, err := m.cc.Connect().CASetConfig(&api.CAConfig{Provider: "consul", Config: map[string]any{"PrivateKey": keyPEM}}, nil); err != nil {
		stop.Store(true)
		wg.Wait()
		t.Fatal(err)
	}
	var newRoot *api.CARoot
	testenv.Eventually(t, 90*time.Second, "api and web hold leaves of the new root", func() error {
		roots, _, err := m.cc.Agent().ConnectCARoots(nil)
		if err != nil {
			return err
		}
		for _, r := range roots.Roots {
			if r.Active {
				newRoot = r
			}
		}
		if newRoot == nil || newRoot.ID == activeRoot(old) {
			return fmt.Errorf("no new active root yet")
		}
		for _, mp := range []*meshPod{m.api, m.web} {
			c := mp.certs(t)
			if c.Serial == old.Serial || activeRoot(c) != newRoot.ID {
				return fmt.Errorf("%s still on serial %s, active root %s", c.Identity, c.Serial, activeRoot(c))
			}
		}
		return nil
	})
	// A little more load on the new leaves.
	target := ok.Load() + 50
	testenv.Eventually(t, 30*time.Second, "50 more requests", func() error {
		if ok.Load() < target {
			return fmt.Errorf("%d", ok.Load())
		}
		return nil
	})
	stop.Store(true)
	wg.Wait()
	t.Logf("rotation under load: %d requests served, %d failed", ok.Load(), fail.Load())
	if n := fail.Load(); n != 0 {
		t.Fatalf("%d requests failed during the rotation; first: %v", n, firstErr.Load())
	}
	// The served chain leads to the new root.
	block, _ := pem.Decode([]byte(newRoot.RootCertPEM))
	rootCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.dialAPI(&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	chain := c.ConnectionState().PeerCertificates
	c.Close()
	pool := x509.NewCertPool()
	pool.AddCert(rootCert)
	inter := x509.NewCertPool()
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("the served chain does not lead to the new root: %v", err)
	}
}

func activeRoot(c certsJSON) string {
	for _, r := range c.Roots {
		if r.Active {
			return r.ID
		}
	}
	return ""
}

// A TCP service: a deny intention closes web's connections to it after the
// handshake (nothing reaches the app); deleting it restores them.
func TestMTLSTCPIntentionAcrossPods(t *testing.T) {
	pods := testenv.NewPods(t)
	consul := testenv.StartConsul(t, testenv.ConsulInPod(pods.Add("consul")))
	cc := consul.Client(t)
	db, web := newMeshPod(t, pods, "db"), newMeshPod(t, pods, "web")
	ln, err := db.pod.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", meshApp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() { // a line echo that counts its connections
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			db.appHits.Add(1)
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	startMeshSidecar(t, db, consul, "db-1", fmt.Sprintf(
		"service: {name: db, port: %d, protocol: tcp, inbound: \"0.0.0.0:%d\", address: %s}\nmtls: {mode: strict}\n", meshApp, meshInbound, db.pod.IP))
	startMeshSidecar(t, web, consul, "web-1", fmt.Sprintf(
		"mtls: {mode: strict}\nservice: {name: web, port: %d, inbound: \"0.0.0.0:%d\", address: %s}\nupstreams:\n  - {service: db, protocol: tcp, listen: \"127.0.0.1:%d\"}\n",
		meshApp, meshInbound, web.pod.IP, meshOutbound))
	echo := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := web.pod.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", meshOutbound))
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			return err
		}
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err != nil {
			return fmt.Errorf("no echo: %w", err)
		}
		return nil
	}
	testenv.Eventually(t, 30*time.Second, "web reaches db", echo)
	if _, _, err := cc.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "db",
		Sources: []*api.SourceIntention{{Name: "web", Action: api.IntentionActionDeny}}}, nil); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, intentionBound, "deny closes TCP connections", func() error {
		if err := echo(); err == nil {
			return fmt.Errorf("echoed")
		}
		return nil
	})
	before := db.appHits.Load()
	for range 5 {
		if err := echo(); err == nil {
			t.Fatal("a denied connection was relayed")
		}
	}
	if n := db.appHits.Load() - before; n != 0 {
		t.Fatalf("%d denied connections reached the app", n)
	}
	if _, err := cc.ConfigEntries().Delete(api.ServiceIntentions, "db", nil); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, intentionBound, "deleted intention lifted", echo)
}

// Permissive: api serves web's mTLS and an outsider's plaintext, and counts
// the plaintext connections.
func TestMTLSPermissiveAcrossPods(t *testing.T) {
	pods := testenv.NewPods(t)
	consul := testenv.StartConsul(t, testenv.ConsulInPod(pods.Add("consul")))
	apiPod, web, outsider := newMeshPod(t, pods, "api"), newMeshPod(t, pods, "web"), newMeshPod(t, pods, "outsider")
	startMeshApp(t, apiPod, "api")
	startMeshSidecar(t, apiPod, consul, "api-1", fmt.Sprintf(
		"service: {name: api, port: %d, inbound: \"0.0.0.0:%d\", address: %s}\nmtls: {mode: permissive}\n", meshApp, meshInbound, apiPod.IP()))
	startMeshSidecar(t, web, consul, "web-1", fmt.Sprintf(
		"service: {name: web, port: %d, inbound: \"0.0.0.0:%d\", address: %s}\nmtls: {mode: strict}\nupstreams:\n  - {service: api, listen: \"127.0.0.1:%d\"}\n",
		meshApp, meshInbound, web.IP(), meshOutbound))
	m := &meshMesh{api: apiPod, web: web, outsider: outsider}
	testenv.Eventually(t, 30*time.Second, "web reaches api over mTLS", func() error {
		code, body, _, err := m.viaWeb("/")
		if err != nil || code != 200 {
			return fmt.Errorf("%d %q %v", code, body, err)
		}
		return nil
	})
	plain := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: outsider.pod.DialContext, DisableKeepAlives: true}}
	for i := range 3 {
		resp, err := plain.Get("http://" + m.apiInbound() + "/x")
		if err != nil {
			t.Fatalf("plaintext request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "hello from api" {
			t.Fatalf("plaintext request %d: %d %q", i, resp.StatusCode, b)
		}
	}
	if v, ok := consulMetricPod(t, apiPod, "sidemesh_mtls_plaintext_connections_total"); !ok || v != 3 {
		t.Fatalf("plaintext connections counted %v (present %v), want 3", v, ok)
	}
}

// IP is the pod's address.
func (mp *meshPod) IP() string { return mp.pod.IP.String() }
