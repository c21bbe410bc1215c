// Package mtlstest makes throwaway certificate authorities and
// Consul-shaped SPIFFE leaf certificates for tests.
package mtlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// CA is a root certificate authority of one trust domain.
type CA struct {
	TrustDomain string
	Cert        *x509.Certificate
	PEM         []byte
	key         *ecdsa.PrivateKey
}

var serial atomic.Int64

// NewCA makes a root CA for trustDomain (e.g. "1111-….consul").
func NewCA(t testing.TB, trustDomain string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://" + trustDomain)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: "Test CA " + trustDomain},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, URIs: []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &CA{TrustDomain: trustDomain, Cert: c, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// ID is the SPIFFE ID Consul gives service in datacenter dc1.
func (ca *CA) ID(service string) string {
	return "spiffe://" + ca.TrustDomain + "/ns/default/dc/dc1/svc/" + service
}

// Leaf issues a leaf for service: certificate and PKCS#8 key, PEM.
func (ca *CA) Leaf(t testing.TB, service string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(ca.ID(service))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: service},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(72 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{u},
		// For tests that verify host names too (the xDS server).
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
}

// Files writes a leaf for service, its key and the CA into dir and returns
// their paths.
func (ca *CA) Files(t testing.TB, dir, service string) (certFile, keyFile, caFile string) {
	t.Helper()
	c, k := ca.Leaf(t, service)
	certFile, keyFile, caFile = filepath.Join(dir, service+".crt"), filepath.Join(dir, service+".key"), filepath.Join(dir, "ca-"+service+".crt")
	for p, b := range map[string][]byte{certFile: c, keyFile: k, caFile: ca.PEM} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile, caFile
}
