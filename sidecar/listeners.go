package sidecar

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type namedListener struct {
	name string
	ln   net.Listener
}

// tcpFor returns the cluster's TCP proxy, made once.
func (s *Sidecar) tcpFor(c *Cluster) *tcpProxy {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	if p, ok := s.tcpByCluster[c]; ok {
		return p
	}
	p := newTCPProxy(c, c.log.With("protocol", "tcp"))
	p.closed = s.tcpClosed // made by a late transparent connection during Shutdown
	if c.inbound {
		p.accept = s.authorizeConn
	} else {
		p.act = &s.act
	}
	p.alog = &s.alog
	s.tcp = append(s.tcp, p)
	s.tcpByCluster[c] = p
	return p
}

// handlerFor returns the cluster's HTTP handler, made once (one transport
// and pool per cluster, shared by its listener and the transparent one).
func (s *Sidecar) handlerFor(c *Cluster) http.Handler {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	if h, ok := s.httpByCluster[c]; ok {
		return h
	}
	slot := &handlerSlot{}
	slot.h.Store(s.newClusterHandler(c))
	s.httpByCluster[c] = slot
	return slot
}

// handlerSlot serves with the cluster handler in force: a reload that
// changes the upstream's settings swaps in a new one, while requests
// already in the old one finish there.
type handlerSlot struct {
	h atomic.Pointer[clusterHandler]
}

type clusterHandler struct {
	http.Handler
	up *upstreamHandler
}

func (s *handlerSlot) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.h.Load().ServeHTTP(w, r) }

// newClusterHandler is a cluster's HTTP proxy with its wrappers.
func (s *Sidecar) newClusterHandler(c *Cluster) *clusterHandler {
	up := newUpstreamHandler(c)
	var h http.Handler = up
	if c.inbound {
		h = s.inboundHandler(s.authorizeHTTP(h))
	} else {
		h = s.act.track(h)
	}
	if l := s.alog.Load(); l != nil {
		h = l.wrap(c, h)
	}
	return &clusterHandler{Handler: h, up: up}
}

// serveCluster serves a cluster's listener: its TCP proxy, or an HTTP
// server (HTTP/1.1 and h2c) over its HTTP proxy.
func (s *Sidecar) serveCluster(c *Cluster, ln net.Listener) *h1Server {
	if c.cfg.Protocol == "tcp" {
		p := s.tcpFor(c)
		s.goServe(func() error { return p.serve(ln) })
		return nil
	}
	srv := newHTTPServer(s.handlerFor(c), s.cfg.Limits, c.log)
	s.useH2Relay(srv, c) // HTTP/2 (h2c, ALPN h2) by the frame relay (h2proxy.go)
	s.clMu.Lock()
	s.servers = append(s.servers, srv)
	s.lnServer[ln] = srv
	s.clMu.Unlock()
	s.goServe(func() error { return srv.Serve(ln) })
	return srv
}

func (s *Sidecar) goServe(f func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := f(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("listener stopped", "err", err)
		}
	}()
}

func (s *Sidecar) closeListeners() {
	if s.adminLn != nil {
		s.adminLn.Close()
	}
	if s.probeLn != nil {
		s.probeLn.Close()
	}
	for _, nl := range s.outbound {
		nl.ln.Close()
	}
	if s.inboundLn != nil {
		s.inboundLn.Close()
	}
	if s.transLn != nil {
		s.transLn.Close()
	}
}

// newHTTPServer serves HTTP/1.1 (the engine, h1server.go) and HTTP/2
// (h2c with prior knowledge, or by ALPN over TLS) on one port.
func newHTTPServer(h http.Handler, lim *LimitsConfig, log *slog.Logger) *h1Server {
	return newH1Server(h, *lim, log)
}

// Accept backoff on temporary errors, as net/http's Server.Serve: 5 ms,
// doubling, at most 1 s.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// serveConns accepts connections from ln until it is closed and runs
// handle for each on its own goroutine in g (a connection accepted after g
// closed is closed at once). A temporary accept error (out of file
// descriptors, say) is logged and retried after a backoff
// (acceptBackoffMin doubling to acceptBackoffMax, reset by a success): the
// listener keeps serving without spinning. Any other error ends the loop
// and is returned.
func serveConns(ln net.Listener, log *slog.Logger, g *connGroup, handle func(net.Conn)) error {
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !temporaryAcceptError(err) {
				return err
			}
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			log.Warn("accept failed; retrying", "err", err, "delay", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if !g.run(func() { handle(conn) }) {
			_ = conn.Close()
		}
	}
}

// connGroup runs connection handlers, each on its own goroutine, and waits
// for them. Once closed it starts no more, so that closing and waiting
// never races with an accept loop starting one.
type connGroup struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// run starts f unless the group is closed; it reports whether it did.
func (g *connGroup) run(f func()) bool {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return false
	}
	g.wg.Add(1)
	g.mu.Unlock()
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
}

// closeAndWait stops new handlers and waits for the running ones.
func (g *connGroup) closeAndWait() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}

// temporaryAcceptError reports whether an Accept error is worth retrying:
// what net/http retries (the error's Temporary method: EMFILE, ENFILE,
// EINTR, timeouts) and the kernel's transient shortages (ENOBUFS, ENOMEM).
// (The net package itself retries a connection aborted before Accept.)
func temporaryAcceptError(err error) bool {
	var te interface{ Temporary() bool }
	if errors.As(err, &te) && te.Temporary() {
		return true
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}
