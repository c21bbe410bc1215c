package mtls

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const td = "11111111-2222-3333-4444-555555555555.consul"

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var serial atomic.Int64

func newCA(t testing.TB, domain string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://" + domain)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: "CA " + domain},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, URIs: []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{cert: c, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// leaf issues a Consul-shaped leaf for service; it returns the cert and key PEM.
func (ca *testCA) leaf(t testing.TB, domain, service string) ([]byte, []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://" + domain + "/ns/default/dc/dc1/svc/" + service)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: service},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(72 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
}

func storeFor(t testing.TB, ca *testCA, domain, service string, extraRoots ...*testCA) *Store {
	t.Helper()
	c, k := ca.leaf(t, domain, service)
	roots := []Root{{ID: "r0", Cert: ca.cert, Active: true}}
	for i, r := range extraRoots {
		roots = append(roots, Root{ID: "r" + string(rune('1'+i)), Cert: r.cert})
	}
	m, err := NewMaterial(c, k, roots, domain)
	if err != nil {
		t.Fatal(err)
	}
	s := &Store{}
	s.Set(m)
	return s
}

// serveEcho runs a listener that answers each connection's line with the
// peer's SPIFFE ID (TLS) or "plain".
func serveEcho(t testing.TB, ln net.Listener) {
	t.Helper()
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				who := "plain"
				if tc, ok := c.(*tls.Conn); ok {
					if err := tc.Handshake(); err != nil {
						return
					}
					cs := tc.ConnectionState()
					id, _ := PeerID(&cs)
					who = id.String()
				}
				if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
					return
				}
				io.WriteString(c, who+"\n")
			}()
		}
	}()
}

func talk(c net.Conn) (string, error) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "hello mesh\n"); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

func listen(t testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func TestStrictHandshake(t *testing.T) {
	ca := newCA(t, td)
	api := storeFor(t, ca, td, "api")
	web := storeFor(t, ca, td, "web")
	ln := NewListener(listen(t), ModeStrict, api.ServerConfig(ServerALPN), nil)
	serveEcho(t, ln)
	addr := ln.Addr().String()

	// A mesh client expecting api: served, and the server is api.
	c, err := tls.Dial("tcp", addr, web.ClientConfig("api", []string{"http/1.1"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	cs := c.ConnectionState()
	if id, _ := PeerID(&cs); ServiceOf(id) != "api" || id.TrustDomain().Name() != td {
		t.Fatalf("server identity %v", id)
	}
	got, err := talk(c)
	if err != nil || strings.TrimSpace(got) != "spiffe://"+td+"/ns/default/dc/dc1/svc/web" {
		t.Fatalf("answer %q, %v", got, err)
	}

	// Expecting another service: the handshake fails with an IdentityError.
	_, err = tls.Dial("tcp", addr, web.ClientConfig("billing", nil, nil))
	var ie *IdentityError
	if !errors.As(err, &ie) || ie.Want != "billing" || ServiceOf(ie.Got) != "api" {
		t.Fatalf("want an identity mismatch, got %v", err)
	}

	// Plaintext: refused.
	pc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := talk(pc); err == nil {
		t.Fatalf("plaintext client was answered %q", got)
	}
	// TLS without a client certificate: refused.
	nc, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err == nil {
		if got, err := talk(nc); err == nil {
			t.Fatalf("client without certificate was answered %q", got)
		}
	}
	// A certificate of another CA (same trust domain name): refused.
	other := storeFor(t, newCA(t, td), td, "web")
	oc, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return other.certificate() }})
	if err == nil {
		if got, err := talk(oc); err == nil {
			t.Fatalf("client of another CA was answered %q", got)
		}
	}
	// Another trust domain whose root we were given anyway: refused.
	foreignCA := newCA(t, "other.consul")
	foreign := storeFor(t, foreignCA, "other.consul", "web")
	api2 := storeFor(t, ca, td, "api", foreignCA)
	ln2 := NewListener(listen(t), ModeStrict, api2.ServerConfig(ServerALPN), nil)
	serveEcho(t, ln2)
	fc, err := tls.Dial("tcp", ln2.Addr().String(), &tls.Config{InsecureSkipVerify: true, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return foreign.certificate() }})
	if err == nil {
		if got, err := talk(fc); err == nil {
			t.Fatalf("client of another trust domain was answered %q", got)
		}
	}
}

func TestRotationAppliesToNextHandshake(t *testing.T) {
	oldCA, newCAcert := newCA(t, td), newCA(t, td)
	api := storeFor(t, oldCA, td, "api")
	web := storeFor(t, oldCA, td, "web", newCAcert) // web already trusts both roots
	ln := NewListener(listen(t), ModeStrict, api.ServerConfig(ServerALPN), nil)
	serveEcho(t, ln)
	cache := tls.NewLRUClientSessionCache(8)
	dial := func() (*x509.Certificate, error) {
		c, err := tls.Dial("tcp", ln.Addr().String(), web.ClientConfig("api", nil, cache))
		if err != nil {
			return nil, err
		}
		defer c.Close()
		if _, err := talk(c); err != nil {
			return nil, err
		}
		return c.ConnectionState().PeerCertificates[0], nil
	}
	first, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	if err := first.CheckSignatureFrom(oldCA.cert); err != nil {
		t.Fatal("first leaf not from the old root")
	}
	// api rotates to a leaf of the new root, trusting both.
	c, k := newCAcert.leaf(t, td, "api")
	m, err := NewMaterial(c, k, []Root{{ID: "new", Cert: newCAcert.cert, Active: true}, {ID: "old", Cert: oldCA.cert}}, td)
	if err != nil {
		t.Fatal(err)
	}
	api.Set(m)
	// A fresh session (no resumption) sees the new leaf at once.
	c2, err := tls.Dial("tcp", ln.Addr().String(), web.ClientConfig("api", nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	leaf := c2.ConnectionState().PeerCertificates[0]
	c2.Close()
	if err := leaf.CheckSignatureFrom(newCAcert.cert); err != nil {
		t.Fatalf("after rotation the served leaf is not from the new root: %v", err)
	}
}

func TestPermissiveServesBothAndCounts(t *testing.T) {
	ca := newCA(t, td)
	api := storeFor(t, ca, td, "api")
	web := storeFor(t, ca, td, "web")
	var plain atomic.Int64
	ln := NewListener(listen(t), ModePermissive, api.ServerConfig(ServerALPN), func() { plain.Add(1) })
	serveEcho(t, ln)
	c, err := tls.Dial("tcp", ln.Addr().String(), web.ClientConfig("api", nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := talk(c); err != nil || !strings.Contains(got, "/svc/web") {
		t.Fatalf("mTLS client: %q, %v", got, err)
	}
	pc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := talk(pc); err != nil || strings.TrimSpace(got) != "plain" {
		t.Fatalf("plaintext client: %q, %v", got, err)
	}
	if n := plain.Load(); n != 1 {
		t.Fatalf("plaintext connections counted %d, want 1", n)
	}
}

func TestFilesReload(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, td)
	f := Files{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), CAFile: filepath.Join(dir, "ca.crt")}
	write := func(service string) {
		c, k := ca.leaf(t, td, service)
		for p, b := range map[string][]byte{f.CertFile: c, f.KeyFile: k, f.CAFile: ca.pem} {
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	write("api")
	m, err := f.Load()
	if err != nil || ServiceOf(m.ID) != "api" || m.TrustDomain.Name() != td || len(m.Roots) != 1 {
		t.Fatalf("load: %+v, %v", m, err)
	}
	st := f.stamp()
	write("api2")
	if f.stamp() == st {
		// Same mtime granularity and size: force a different stamp.
		now := time.Now().Add(time.Second)
		os.Chtimes(f.CertFile, now, now)
	}
	if f.stamp() == st {
		t.Fatal("a rewrite of the files does not change their stamp")
	}
	m2, err := f.Load()
	if err != nil || ServiceOf(m2.ID) != "api2" {
		t.Fatalf("reload: %v", err)
	}
	if err := os.WriteFile(f.KeyFile, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Load(); err == nil || !strings.Contains(err.Error(), "mtls.cert_file") {
		t.Fatalf("a bad key: %v", err)
	}
}

func TestPolicy(t *testing.T) {
	p := &Policy{Destination: "api", DefaultAllow: true, Intentions: []Intention{
		{Source: "web", Permissions: []Permission{
			{Action: Deny, PathPrefix: "/admin"},
			{Action: Deny, Methods: []string{"DELETE"}},
			{Action: Deny, Headers: []HeaderMatch{{Name: "x-debug", Present: true}}},
			{Action: Allow, PathRegex: regexp.MustCompile(`^/v[0-9]+/`)},
		}},
		{Source: "batch", Action: Deny},
		{Source: "*", Action: Allow},
	}}
	req := func(method, path string, hdr ...string) *http.Request {
		r, _ := http.NewRequest(method, "http://api"+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		return r
	}
	cases := []struct {
		src  string
		r    *http.Request
		want bool
	}{
		{"web", req("GET", "/admin/x"), false},
		{"web", req("GET", "/v1/x"), true},
		{"web", req("DELETE", "/v1/x"), false},
		{"web", req("GET", "/v1/x", "X-Debug", "1"), false},
		{"web", req("GET", "/other"), true}, // no permission matches: default
		{"batch", req("GET", "/v1/x"), false},
		{"ops", req("GET", "/admin"), true},
	}
	for _, c := range cases {
		if d := p.Request(c.src, c.r); d.Allowed != c.want {
			t.Errorf("%s %s %s: allowed=%v (%s), want %v", c.src, c.r.Method, c.r.URL.Path, d.Allowed, d.Reason, c.want)
		}
	}
	if d := p.Connection("batch"); d.Allowed {
		t.Error("L4 deny allowed")
	}
	if d := p.Connection("web"); !d.Allowed {
		t.Error("an L7 intention refuses the connection")
	}
	p.DefaultAllow = false
	p.Intentions = p.Intentions[:2]
	if d := p.Connection("ops"); d.Allowed {
		t.Error("default deny allowed")
	}
	var a Authorizer
	if d := a.Connection("web"); d.Allowed {
		t.Error("no policy yet must deny")
	}
}
