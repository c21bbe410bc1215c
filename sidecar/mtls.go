package sidecar

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidemesh/sidemesh/mtls"
)

// This file wires mutual TLS (package mtls) into the data plane: the
// identity source (Consul Connect or files), the inbound listener's TLS and
// intentions, origination on the one dialer (dial.go), /certs and the
// metrics.

// meshTLS is the sidecar's mTLS state; nil when mtls.mode is off.
type meshTLS struct {
	mode    string
	source  string // consul | files
	service string // the local service ("" for a sidecar without one)
	store   *mtls.Store
	// authz holds the intentions for the local service (Consul); nil with
	// file identities, where every verified mesh peer is allowed.
	authz *mtls.Authorizer

	plaintext  prometheus.Counter
	decisions  *prometheus.CounterVec // result
	originFail *prometheus.CounterVec // upstream, reason
}

// handshakeTimeout bounds an inbound TLS handshake the sidecar runs itself
// (TCP services; net/http bounds the HTTP ones by ReadHeaderTimeout).
const handshakeTimeout = 10 * time.Second

// setupMTLS builds the mTLS state and its metrics (nothing runs yet).
func (s *Sidecar) setupMTLS() {
	m := s.cfg.MTLS
	if !m.on() {
		return
	}
	mt := &meshTLS{mode: m.Mode, store: &mtls.Store{}, source: "consul"}
	if m.files() {
		mt.source = "files"
	}
	if s.cfg.Service != nil {
		mt.service = s.cfg.Service.Name
	}
	if mt.source == "consul" && mt.service != "" {
		mt.authz = &mtls.Authorizer{}
	}
	mt.plaintext = prometheus.NewCounter(prometheus.CounterOpts{Name: "sidemesh_mtls_plaintext_connections_total",
		Help: "Inbound connections accepted in plaintext (permissive mode): zero for long means strict is safe."})
	mt.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidemesh_authz_decisions_total",
		Help: "Inbound intention decisions (per TCP connection, per HTTP request) by result (allow, deny)."}, []string{"result"})
	mt.originFail = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidemesh_mtls_origination_failures_total",
		Help: "Outbound mTLS handshakes that failed, by upstream and reason (identity: the server is not the upstream's service; handshake: anything else)."}, []string{"upstream", "reason"})
	s.m.Registry.MustRegister(mt.plaintext, mt.decisions, mt.originFail, leafExpiryCollector{mt.store})
	s.mesh = mt
}

// startMTLS starts the identity source: the Consul agent's Connect CA (a
// disabled Connect fails here) or the files.
func (s *Sidecar) startMTLS() error {
	mt := s.mesh
	if mt == nil {
		return nil
	}
	if mt.source == "files" {
		m := s.cfg.MTLS
		ctx, cancel := context.WithCancel(context.Background())
		f := mtls.Files{CertFile: m.CertFile, KeyFile: m.KeyFile, CAFile: m.CAFile}
		if err := f.Watch(ctx, mt.store, 0, s.log.With("component", "mtls")); err != nil {
			cancel()
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
		s.closers = append(s.closers, cancel)
		return nil
	}
	if s.consul == nil {
		return fmt.Errorf("%w: mtls.mode: %s needs Consul discovery (Connect CA) or mtls.cert_file, key_file and ca_file", ErrConfig, mt.mode)
	}
	_, err := s.consul.StartConnect(mt.service, mt.store, mt.authz)
	return err
}

// ready reports whether mTLS can serve (a leaf and, with Consul, the
// intentions are known).
func (mt *meshTLS) ready() (bool, string) {
	if mt.store.Current() == nil {
		return false, "mtls: no leaf certificate yet"
	}
	if mt.authz != nil && mt.authz.Policy() == nil {
		return false, "mtls: no intentions yet"
	}
	return true, ""
}

// wrapInbound puts the inbound listener behind TLS (strict) or TLS
// sniffing (permissive).
func (s *Sidecar) wrapInbound(ln net.Listener) net.Listener {
	mt := s.mesh
	if mt == nil {
		return ln
	}
	return mtls.NewListener(ln, mt.mode, mt.store.ServerConfig(mtls.ServerALPN), mt.plaintext.Inc)
}

// decide counts and returns one decision.
func (mt *meshTLS) decide(d mtls.Decision) bool {
	if d.Allowed {
		mt.decisions.WithLabelValues("allow").Inc()
	} else {
		mt.decisions.WithLabelValues("deny").Inc()
	}
	return d.Allowed
}

// authorizeHTTP checks each inbound request's source identity (the client
// certificate of its connection) against the intentions, L7 permissions
// included; a denied request gets a 403 local reply naming both sides. A
// plaintext request (permissive mode) has no identity and is not checked:
// permissive is the migration mode.
func (s *Sidecar) authorizeHTTP(h http.Handler) http.Handler {
	mt := s.mesh
	if mt == nil || mt.authz == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			h.ServeHTTP(w, r)
			return
		}
		id, _ := mtls.PeerID(r.TLS)
		src := mtls.ServiceOf(id)
		d := mt.authz.Request(src, r)
		allowed := mt.decide(d)
		if rec := accessRecordFrom(r.Context()); rec != nil {
			rec.source, rec.authz = id.String(), "deny"
			if allowed {
				rec.authz = "allow"
			}
		}
		if !allowed {
			s.log.Debug("mtls: request denied", "source", id.String(), "destination", mt.service, "reason", d.Reason, "path", r.URL.Path)
			writeLocalReply(w, r, &authzDenied{source: id.String(), destination: mt.service, reason: d.Reason})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// authorizeConn runs a TCP inbound connection's handshake and checks its
// source against the intentions; false: the caller closes it.
func (s *Sidecar) authorizeConn(conn net.Conn) bool {
	mt := s.mesh
	tc, ok := conn.(*tls.Conn)
	if mt == nil || !ok {
		return true // off, or plaintext in permissive mode
	}
	_ = tc.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.Handshake(); err != nil {
		s.log.Debug("mtls: inbound handshake failed", "remote", conn.RemoteAddr().String(), "err", err)
		return false
	}
	_ = tc.SetDeadline(time.Time{})
	if mt.authz == nil {
		return true
	}
	cs := tc.ConnectionState()
	id, _ := mtls.PeerID(&cs)
	d := mt.authz.Connection(mtls.ServiceOf(id))
	if !mt.decide(d) {
		s.log.Debug("mtls: connection denied", "source", id.String(), "destination", mt.service, "reason", d.Reason)
		return false
	}
	return true
}

// authzDenied is an intention's deny, answered 403 by localReply.
type authzDenied struct{ source, destination, reason string }

func (e *authzDenied) Error() string {
	return fmt.Sprintf("RBAC: access denied: %s is not allowed to call %s (%s)", e.source, e.destination, e.reason)
}

// ALPN offered by origination per dial mode: the protocol the pool speaks.
var (
	alpnH1 = []string{"http/1.1"}
	alpnH2 = []string{"h2"}
)

// originate runs the client handshake on a fresh connection to a mesh
// endpoint of upstream: our leaf, and the server must be upstream's
// service. A failure is counted and returned as the handshake error.
func (mt *meshTLS) originate(ctx context.Context, conn net.Conn, upstream string, alpn []string, cache tls.ClientSessionCache) (*tls.Conn, error) {
	tc := tls.Client(conn, mt.store.ClientConfig(upstream, alpn, cache))
	if err := tc.HandshakeContext(ctx); err != nil {
		reason := "handshake"
		var ie *mtls.IdentityError
		if errors.As(err, &ie) {
			reason = "identity"
		}
		mt.originFail.WithLabelValues(upstream, reason).Inc()
		return nil, err
	}
	return tc, nil
}

// certsView is GET /certs: identities and validity, never key material.
type certsView struct {
	Mode             string     `json:"mode"`
	Source           string     `json:"source"`
	Identity         string     `json:"identity,omitempty"`
	TrustDomain      string     `json:"trust_domain,omitempty"`
	Serial           string     `json:"serial,omitempty"`
	NotBefore        *time.Time `json:"not_before,omitempty"`
	NotAfter         *time.Time `json:"not_after,omitempty"`
	ExpiresInSeconds float64    `json:"expires_in_seconds,omitempty"`
	Chain            int        `json:"chain_length,omitempty"`
	Roots            []rootView `json:"roots"`
	Error            string     `json:"error,omitempty"`
}

type rootView struct {
	ID       string    `json:"id"`
	Active   bool      `json:"active"`
	Subject  string    `json:"subject"`
	NotAfter time.Time `json:"not_after"`
}

func (s *Sidecar) serveCerts(w http.ResponseWriter, _ *http.Request) {
	mt := s.mesh
	v := certsView{Mode: mtls.ModeOff, Roots: []rootView{}}
	if mt != nil {
		v.Mode, v.Source = mt.mode, mt.source
		if m := mt.store.Current(); m != nil {
			nb, na := m.Cert.Leaf.NotBefore, m.NotAfter()
			v.Identity, v.TrustDomain, v.Serial = m.ID.String(), m.TrustDomain.Name(), m.Serial()
			v.NotBefore, v.NotAfter = &nb, &na
			v.ExpiresInSeconds = time.Until(na).Seconds()
			v.Chain = len(m.Cert.Certificate)
			for _, r := range m.Roots {
				v.Roots = append(v.Roots, rootView{ID: r.ID, Active: r.Active, Subject: r.Cert.Subject.String(), NotAfter: r.Cert.NotAfter})
			}
		} else {
			v.Error = mtls.ErrNoIdentity.Error()
		}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// leafExpiryCollector is sidemesh_mtls_leaf_expiry_seconds: seconds until
// the leaf in force expires (absent before the first leaf).
type leafExpiryCollector struct{ store *mtls.Store }

var leafExpiryDesc = prometheus.NewDesc("sidemesh_mtls_leaf_expiry_seconds",
	"Seconds until the mTLS leaf certificate in force expires.", nil, nil)

func (c leafExpiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- leafExpiryDesc }

func (c leafExpiryCollector) Collect(ch chan<- prometheus.Metric) {
	if m := c.store.Current(); m != nil {
		ch <- prometheus.MustNewConstMetric(leafExpiryDesc, prometheus.GaugeValue, time.Until(m.NotAfter()).Seconds())
	}
}
