package mtls

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Modes of mtls.mode.
const (
	ModeOff        = "off"
	ModeStrict     = "strict"
	ModePermissive = "permissive"
)

// ErrNoIdentity is returned by handshakes before any leaf is known.
var ErrNoIdentity = errors.New("mtls: no leaf certificate yet")

// Root is one CA certificate of the trust bundle.
type Root struct {
	ID     string // the source's id (Consul's root ID), or the SHA-256 of the certificate
	Active bool
	Cert   *x509.Certificate
}

// Material is one leaf with its trust bundle: what every handshake uses
// until the next Material replaces it.
type Material struct {
	Cert        tls.Certificate // the leaf, then any intermediates; Leaf is set
	ID          spiffeid.ID     // the leaf's SPIFFE ID
	Roots       []Root          // every root the source lists
	TrustDomain spiffeid.TrustDomain
	bundle      *x509bundle.Bundle
}

// NewMaterial parses a PEM leaf chain, its PEM private key and the roots.
// The trust domain is trustDomain when not empty (Consul's roots name it),
// else the leaf's. The leaf must verify against the roots.
func NewMaterial(certPEM, keyPEM []byte, roots []Root, trustDomain string) (*Material, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("mtls: leaf certificate and key: %w", err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("mtls: leaf certificate: %w", err)
		}
		cert.Leaf = leaf
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("mtls: leaf certificate: %w", err)
	}
	td := id.TrustDomain()
	if trustDomain != "" {
		if td, err = spiffeid.TrustDomainFromString(trustDomain); err != nil {
			return nil, fmt.Errorf("mtls: trust domain %q: %w", trustDomain, err)
		}
	}
	if len(roots) == 0 {
		return nil, errors.New("mtls: the trust bundle has no root")
	}
	authorities := make([]*x509.Certificate, 0, len(roots))
	for _, r := range roots {
		authorities = append(authorities, r.Cert)
	}
	m := &Material{Cert: cert, ID: id, Roots: roots, TrustDomain: td, bundle: x509bundle.FromX509Authorities(td, authorities)}
	chain := []*x509.Certificate{leaf}
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("mtls: intermediate certificate: %w", err)
		}
		chain = append(chain, c)
	}
	if _, _, err := x509svid.Verify(chain, m.bundle); err != nil {
		return nil, fmt.Errorf("mtls: the leaf %s does not verify against the trust bundle: %w", id, err)
	}
	return m, nil
}

// ParseRoots parses every certificate of a PEM bundle; ids are the
// certificates' SHA-256 fingerprints.
func ParseRoots(pemData []byte) ([]Root, error) {
	var out []Root
	for {
		var b *pem.Block
		b, pemData = pem.Decode(pemData)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("mtls: CA certificate %d: %w", len(out)+1, err)
		}
		out = append(out, Root{ID: Fingerprint(c), Cert: c})
	}
	if len(out) == 0 {
		return nil, errors.New("mtls: no CERTIFICATE block")
	}
	return out, nil
}

// Fingerprint is the colon-free hex SHA-256 of a certificate.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// Serial is the leaf's serial number in Consul's colon-separated hex.
func (m *Material) Serial() string {
	b := m.Cert.Leaf.SerialNumber.Bytes()
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02x", x)
	}
	return strings.Join(parts, ":")
}

// NotAfter is when the leaf expires.
func (m *Material) NotAfter() time.Time { return m.Cert.Leaf.NotAfter }

// Store holds the Material in force. The zero value holds none.
type Store struct {
	cur     atomic.Pointer[Material]
	once    sync.Once
	readyCh chan struct{}
	mu      sync.Mutex
	subs    []func(*Material)
}

func (s *Store) ready() chan struct{} {
	s.once.Do(func() { s.readyCh = make(chan struct{}) })
	return s.readyCh
}

// Set makes m the material of every later handshake.
func (s *Store) Set(m *Material) {
	old := s.cur.Swap(m)
	if old == nil {
		close(s.ready())
	}
	s.mu.Lock()
	subs := slices.Clone(s.subs)
	s.mu.Unlock()
	for _, f := range subs {
		f(m)
	}
}

// OnChange calls f with each new material (after Set).
func (s *Store) OnChange(f func(*Material)) {
	s.mu.Lock()
	s.subs = append(s.subs, f)
	s.mu.Unlock()
}

// Current is the material in force, or nil.
func (s *Store) Current() *Material { return s.cur.Load() }

// Ready is closed once the first material is set.
func (s *Store) Ready() <-chan struct{} { return s.ready() }

// GetX509BundleForTrustDomain makes the store an x509bundle.Source: the
// bundle in force, for its trust domain only (a peer of another trust
// domain has no bundle and fails verification).
func (s *Store) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	m := s.cur.Load()
	if m == nil {
		return nil, ErrNoIdentity
	}
	if td != m.TrustDomain {
		return nil, fmt.Errorf("mtls: trust domain %q is not the mesh's (%q)", td, m.TrustDomain)
	}
	return m.bundle, nil
}

func (s *Store) certificate() (*tls.Certificate, error) {
	m := s.cur.Load()
	if m == nil {
		return nil, ErrNoIdentity
	}
	return &m.Cert, nil
}

// verify checks a peer's chain against the bundle in force (x509svid) and
// returns its SPIFFE ID.
func (s *Store) verify(certs []*x509.Certificate) (spiffeid.ID, error) {
	if len(certs) == 0 {
		return spiffeid.ID{}, errors.New("mtls: the peer presented no certificate")
	}
	id, _, err := x509svid.Verify(certs, s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("mtls: peer certificate: %w", err)
	}
	return id, nil
}

// ALPN protocols the inbound listener offers.
var ServerALPN = []string{"h2", "http/1.1"}

// ServerConfig is the inbound listener's TLS: TLS 1.2 or 1.3, the leaf in
// force, a client certificate required and verified against the bundle in
// force and its trust domain (on resumed sessions too).
func (s *Store) ServerConfig(alpn []string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: alpn,
		ClientAuth: tls.RequireAnyClientCert, // verified by VerifyConnection, against the bundle in force
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := s.verify(cs.PeerCertificates)
			return err
		},
	}
}

// ClientConfig is outbound origination to service: our leaf as client
// certificate, and the server must present a SPIFFE ID of the mesh's trust
// domain whose path names service (…/svc/SERVICE); anything else fails the
// handshake with an *IdentityError. cache enables session resumption.
func (s *Store) ClientConfig(service string, alpn []string, cache tls.ClientSessionCache) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		NextProtos:         alpn,
		InsecureSkipVerify: true, // verified by VerifyConnection: SPIFFE IDs, not host names
		ClientSessionCache: cache,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := s.verify(cs.PeerCertificates)
			if err != nil {
				return err
			}
			if got := ServiceOf(id); got != service {
				return &IdentityError{Want: service, Got: id}
			}
			return nil
		},
	}
}

// IdentityError is a server whose identity is not the expected service's.
type IdentityError struct {
	Want string
	Got  spiffeid.ID
}

func (e *IdentityError) Error() string {
	return fmt.Sprintf("mtls: identity mismatch: want service %q, the server presented %s", e.Want, e.Got)
}

// ServiceOf is the service an identity names: the segment after "svc" in
// the path (Consul's spiffe://TD/ns/NS/dc/DC/svc/SERVICE), "" if none.
func ServiceOf(id spiffeid.ID) string {
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	for i := len(segs) - 2; i >= 0; i-- {
		if segs[i] == "svc" {
			return segs[i+1]
		}
	}
	return ""
}

// PeerID is the verified SPIFFE ID of a handshake's peer (the listener and
// dialer verified the chain already).
func PeerID(cs *tls.ConnectionState) (spiffeid.ID, bool) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	return id, err == nil
}
