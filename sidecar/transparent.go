package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/h2relay"
)

// transparentListener serves outbound traffic that iptables redirected to
// it (`transparent.listen`, see `sidemesh iptables`). A connection is routed
// by what it carries:
//
//   - HTTP (sniffed from the first bytes: a method and a space, or the h2c
//     preface) goes to the upstream named by the Host header (`api`,
//     `api:8080`, `api.anything`); a Host that is an IP address routes by the
//     original destination instead; an unknown upstream gets 404.
//   - Anything else goes to the upstream owning the original destination
//     (SO_ORIGINAL_DST); unknown destinations are closed.
//
// The sniff waits at most sniffTimeout for the client to speak (Istio's
// protocol detection does the same); a server-first protocol to a known
// TCP upstream is routed without waiting.
type transparentListener struct {
	s      *Sidecar
	log    *slog.Logger
	ln     net.Listener
	httpLn *connQueue
	srv    *h1Server
	h2     *h2relay.Server // HTTP/2 (h2Relay)
	h2Once sync.Once
	wg     sync.WaitGroup // the HTTP server
	conns  connGroup      // one per accepted connection, until routed
}

const sniffTimeout = time.Second

func newTransparent(s *Sidecar, ln net.Listener) *transparentListener {
	t := &transparentListener{s: s, log: s.log.With("component", "transparent"), ln: ln, httpLn: newConnQueue(ln.Addr())}
	t.srv = newHTTPServer(http.HandlerFunc(t.serveHTTP), s.cfg.Limits, t.log)
	t.srv.connFn = func(ctx context.Context, c net.Conn) context.Context {
		if pc, ok := c.(*peekedConn); ok {
			return context.WithValue(ctx, connKey{}, pc)
		}
		return ctx
	}
	// HTTP/2 goes to the frame relay, each stream to the upstream its
	// :authority names; Shutdown's GOAWAY drains those connections.
	drain, cancel := context.WithCancel(context.Background())
	t.srv.h2 = func(ctx context.Context, conn net.Conn) { t.serveH2(drain, ctx, conn) }
	t.srv.h2base.RegisterOnShutdown(cancel)
	return t
}

func (t *transparentListener) serve() error {
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		_ = t.srv.Serve(t.httpLn)
	}()
	return serveConns(t.ln, t.log, &t.conns, t.route)
}

func (t *transparentListener) close() {
	t.ln.Close()
	t.httpLn.Close()
	_ = t.srv.Close()
	t.conns.closeAndWait()
	t.wg.Wait()
}

// clusterFor finds the upstream that owns a destination address.
func (t *transparentListener) clusterFor(dst string) *Cluster {
	for _, c := range t.s.clusterList() {
		if c.host(dst) != nil {
			return c
		}
	}
	return nil
}

func (t *transparentListener) route(conn net.Conn) {
	dst := originalDst(conn)
	owner := t.clusterFor(dst)
	if owner != nil && owner.cfg.Protocol == "tcp" {
		t.s.tcpFor(owner).handle(conn)
		return
	}
	br := bufio.NewReaderSize(conn, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(sniffTimeout))
	head, _ := br.Peek(8)
	_ = conn.SetReadDeadline(time.Time{})
	pc := &peekedConn{Conn: conn, r: br, dst: dst}
	if looksHTTP(head) {
		t.httpLn.push(pc)
		return
	}
	if owner == nil {
		if t.log.Enabled(context.Background(), slog.LevelDebug) {
			t.log.Debug("no upstream for destination; closing", "dst", dst)
		}
		conn.Close()
		return
	}
	t.s.tcpFor(owner).handle(pc)
}

var httpMethods = [][]byte{[]byte("GET "), []byte("POST "), []byte("PUT "), []byte("HEAD "), []byte("DELETE "),
	[]byte("PATCH "), []byte("OPTIONS "), []byte("CONNECT "), []byte("TRACE "), []byte("PRI * HT")}

func looksHTTP(head []byte) bool {
	for _, m := range httpMethods {
		n := len(m)
		if len(head) < n {
			n = len(head)
		}
		if n > 0 && len(head) >= len(m) && bytes.Equal(head[:len(m)], m) {
			return true
		}
	}
	return false
}

// serveHTTP routes one request by Host, then by original destination.
func (t *transparentListener) serveHTTP(w http.ResponseWriter, r *http.Request) {
	dst := ""
	if pc, ok := connFromContext(r); ok {
		dst = pc.dst
	}
	c := t.clusterForHost(r.Host, dst)
	if c == nil {
		writeLocalReply(w, r, &upstreamError{kind: failUnknown, host: r.Host, err: ErrUnknownUpstream})
		return
	}
	t.s.handlerFor(c).ServeHTTP(w, r)
}

// clusterForHost is the HTTP upstream a request for host (Host or
// :authority) goes to: the one it names (`api`, `api:8080`,
// `api.anything`), or for an address the one owning the connection's
// original destination dst; nil for none (a 404).
func (t *transparentListener) clusterForHost(host, dst string) *Cluster {
	name := host
	if h, _, err := net.SplitHostPort(name); err == nil {
		name = h
	}
	if i := strings.IndexByte(name, '.'); i > 0 && net.ParseIP(name) == nil {
		name = name[:i]
	}
	var c *Cluster
	if net.ParseIP(name) != nil || name == "" {
		if dst != "" {
			c = t.clusterFor(dst) // called by address
		}
	} else {
		c = t.s.Cluster(name) // called by name
	}
	if c == nil || c.cfg.Protocol == "tcp" {
		return nil
	}
	return c
}

// serveH2 serves one captured HTTP/2 connection (conn opens with the
// client preface) through the frame relay: each stream is routed by its
// :authority as serveHTTP routes a request, and goes out on the pooled
// upstream connections of the upstream it names. ctx is the connection's
// (it carries the original destination); canceling drain sends GOAWAY.
func (t *transparentListener) serveH2(drain, ctx context.Context, conn net.Conn) {
	th := &transparentH2{t: t, conns: map[*Cluster]*h2Conn{}}
	if pc, ok := ctx.Value(connKey{}).(*peekedConn); ok {
		th.dst = pc.dst
	}
	th.remote = conn.RemoteAddr().String()
	if host, _, err := net.SplitHostPort(th.remote); err == nil {
		th.remoteHost = host
	}
	if err := t.h2Relay().ServeConn(drain, conn, nil, th); err != nil {
		t.log.Debug("HTTP/2 connection ended", "remote", th.remote, "err", err)
	}
}

// h2Relay is the transparent listener's HTTP/2 relay, made once. Its own
// pool stays empty: every attempt names its upstream's pool.
func (t *transparentListener) h2Relay() *h2relay.Server {
	t.h2Once.Do(func() {
		cfg := h2RelayConfig(t.s.config().Limits, 0)
		log := t.log
		cfg.Log = func(msg string, args ...any) { log.Debug(msg, args...) }
		t.h2 = h2relay.NewServer(h2relay.NewPool(cfg))
	})
	return t.h2
}

// transparentH2 is the relay's policy for one captured HTTP/2 connection:
// per stream, the policy of the upstream its :authority names.
type transparentH2 struct {
	t                  *transparentListener
	dst                string
	remote, remoteHost string
	conns              map[*Cluster]*h2Conn // only Open uses it, on the connection's read loop
}

func (th *transparentH2) Open(req *h2relay.Request) (h2relay.Stream, *h2relay.Reply) {
	host := req.Header.Get(":authority")
	if host == "" {
		host = req.Header.Get("host")
	}
	c := th.t.clusterForHost(host, th.dst)
	if c == nil {
		code, body := localReply(&upstreamError{kind: failUnknown, host: host, err: ErrUnknownUpstream})
		return nil, h2LocalReply(code, body, false, strings.HasPrefix(req.Header.Get("content-type"), "application/grpc"))
	}
	hc := th.conns[c]
	if hc == nil {
		hc = &h2Conn{s: th.t.s, c: c, remote: th.remote, remoteHost: th.remoteHost, pool: th.t.s.h2For(c).Pool()}
		th.conns[c] = hc
	}
	return hc.Open(req)
}

// peekedConn is a connection whose first bytes were read for sniffing.
type peekedConn struct {
	net.Conn
	r   *bufio.Reader
	dst string
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// CloseWrite keeps half-close working for TCP relays.
func (p *peekedConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

type connKey struct{}

func connFromContext(r *http.Request) (*peekedConn, bool) {
	pc, ok := r.Context().Value(connKey{}).(*peekedConn)
	return pc, ok
}

// connQueue is a net.Listener fed with already-accepted connections.
type connQueue struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (q *connQueue) push(c net.Conn) {
	select {
	case q.ch <- c:
	case <-q.done:
		c.Close()
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }

// listenTransparent binds transparent.listen. Capture redirects a
// connection to the loopback address of its own family (nft's and
// iptables' REDIRECT to 127.0.0.1 or ::1), so when the configured address
// is 127.0.0.1:P the listener also binds [::1]:P, on the same port, where
// the host has IPv6 loopback; without IPv6 it binds 127.0.0.1:P alone. Any
// other address is bound as given.
func listenTransparent(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	ap, perr := netip.ParseAddrPort(ln.Addr().String())
	if perr != nil || ap.Addr() != netip.AddrFrom4([4]byte{127, 0, 0, 1}) {
		return ln, nil
	}
	ln6, err := net.Listen("tcp6", netip.AddrPortFrom(netip.IPv6Loopback(), ap.Port()).String())
	if err != nil {
		if errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EPROTONOSUPPORT) {
			return ln, nil // no IPv6 here: nothing to redirect to ::1
		}
		ln.Close()
		return nil, fmt.Errorf("[::1]:%d (the IPv6 side of %s): %w", ap.Port(), addr, err)
	}
	return newMultiListener(ln, ln6), nil
}

// multiListener accepts from several listeners as one; Addr is the first's.
type multiListener struct {
	lns       []net.Listener
	accepted  chan acceptResult
	done      chan struct{}
	closeOnce sync.Once
}

type acceptResult struct {
	conn net.Conn
	err  error
}

func newMultiListener(lns ...net.Listener) *multiListener {
	m := &multiListener{lns: lns, accepted: make(chan acceptResult), done: make(chan struct{})}
	for _, ln := range lns {
		go m.acceptFrom(ln)
	}
	return m
}

// acceptFrom hands ln's connections (and temporary errors) to Accept until
// ln fails for good or the multiListener closes.
func (m *multiListener) acceptFrom(ln net.Listener) {
	for {
		c, err := ln.Accept()
		select {
		case m.accepted <- acceptResult{c, err}:
		case <-m.done:
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil && !temporaryAcceptError(err) {
			return
		}
	}
}

func (m *multiListener) Accept() (net.Conn, error) {
	select {
	case r := <-m.accepted:
		return r.conn, r.err
	case <-m.done:
		return nil, net.ErrClosed
	}
}

func (m *multiListener) Close() error {
	var errs []error
	m.closeOnce.Do(func() {
		close(m.done)
		for _, ln := range m.lns {
			errs = append(errs, ln.Close())
		}
	})
	return errors.Join(errs...)
}

func (m *multiListener) Addr() net.Addr { return m.lns[0].Addr() }
