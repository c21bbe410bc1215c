package sidecar

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/sidemesh/sidemesh/sidecar/http1"
)

// h1Server is the sidecar's HTTP/1.1 engine: it serves the upstream,
// inbound and transparent listeners' connections in place of net/http's
// Server. Each request head is read and checked by package http1 (limits,
// framing, header bytes) before anything reaches a handler; a refused
// request is answered (400, 431, 501, 505, 417) and the connection closed
// after the rest of it is read and discarded up to a bound, so the client
// reads the answer rather than a reset. There is no background read per
// request; a request in flight longer than clientWatchDelay gets one
// (a client that went away cancels its upstream request).
//
// Hand-offs: an HTTP/2 connection (prior knowledge, or "h2" by ALPN on a
// TLS connection) goes to serveH2 for its whole life; everything else,
// upgrades included, is served here.
type h1Server struct {
	h      http.Handler
	lim    LimitsConfig
	hlim   http1.Limits
	log    *slog.Logger
	h2     func(context.Context, net.Conn) // serves one HTTP/2 connection
	h2base *http.Server                    // its graceful shutdown
	connFn func(context.Context, net.Conn) context.Context

	closing atomic.Bool
	mu      sync.Mutex
	lns     map[net.Listener]struct{}
	conns   map[*h1conn]struct{}  // HTTP/1.1 connections (idle ones close on Shutdown)
	raw     map[net.Conn]struct{} // every connection, HTTP/2 ones too (Close closes them)
	g       connGroup
}

// idleTimeout closes a keep-alive connection with no request for that
// long (Envoy's idle_timeout).
const idleTimeout = time.Hour

// clientWatchDelay: a request still in flight after this long gets a
// background read that notices the client going away.
const clientWatchDelay = 500 * time.Millisecond

// discardLimit bounds what is read and thrown away of a request body the
// handler left unread (or of a refused request) to keep the connection.
const discardLimit = 256 << 10

func newH1Server(h http.Handler, lim LimitsConfig, log *slog.Logger) *h1Server {
	s := &h1Server{h: h, lim: lim, hlim: lim.head(), log: log,
		lns: map[net.Listener]struct{}{}, conns: map[*h1conn]struct{}{}, raw: map[net.Conn]struct{}{}}
	s.h2, s.h2base = newStdH2(h, *lim.MaxConcurrentStreams, log)
	return s
}

// Serve accepts connections from ln until it is closed.
func (s *h1Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()
	err := serveConns(ln, s.log, &s.g, s.serveConn)
	if s.closing.Load() {
		return http.ErrServerClosed
	}
	return err
}

// Shutdown stops accepting, closes idle connections, lets requests in
// flight finish (their connections close after the response) and waits
// for them until ctx ends; then it closes what is left.
func (s *h1Server) Shutdown(ctx context.Context) error {
	s.closing.Store(true)
	s.mu.Lock()
	for ln := range s.lns {
		_ = ln.Close()
	}
	for c := range s.conns {
		c.closeIfIdle()
	}
	s.mu.Unlock()
	if s.h2base != nil {
		_ = s.h2base.Shutdown(context.Background()) // GOAWAY; the connections end on their own
	}
	done := make(chan struct{})
	go func() { s.g.closeAndWait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		_ = s.Close()
		<-done
		return ctx.Err()
	}
}

// Close closes the listeners and every connection at once.
func (s *h1Server) Close() error {
	s.closing.Store(true)
	s.mu.Lock()
	for ln := range s.lns {
		_ = ln.Close()
	}
	for c := range s.raw {
		_ = c.Close()
	}
	s.mu.Unlock()
	return nil
}

// newStdH2 is the HTTP/2 hand-off: x/net/http2's server over h; the
// returned base server's Shutdown sends GOAWAY on its connections.
func newStdH2(h http.Handler, maxStreams int, log *slog.Logger) (func(context.Context, net.Conn), *http.Server) {
	base := &http.Server{Handler: h, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	h2s := &http2.Server{MaxConcurrentStreams: uint32(maxStreams)}
	if maxStreams == 0 {
		h2s.MaxConcurrentStreams = 1<<31 - 1
	}
	_ = http2.ConfigureServer(base, h2s)
	return func(ctx context.Context, c net.Conn) {
		h2s.ServeConn(c, &http2.ServeConnOpts{Context: ctx, Handler: h, BaseConfig: base})
	}, base
}

// h1conn is one downstream connection.
type h1conn struct {
	srv  *h1Server
	rwc  net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	ctx  context.Context
	tls  *tls.ConnectionState
	addr string

	state    atomic.Int32 // connIdle, connActive, connClosed
	deadline time.Time    // the read deadline last set
	served   int

	// per request, reused
	head   http1.Head
	big    []byte        // a head larger than br's buffer
	req    *http.Request // the handler's, reused
	reqCtx *http.Request // its template: only the context is set
	url    url.URL
	hdr    http.Header
	vals   []string
	body   h1body
	chunk  *http1.ChunkedReader
	w      h1response
	cr     connReader

	// the client watch (onWatch)
	watch     *time.Timer
	wmu       sync.Mutex
	watchOff  bool
	cancel    context.CancelFunc
	cancelReq context.CancelFunc // the requests' context (see request)
	bgDone    chan struct{}      // the background read's end (nil: none)
	bgGone    atomic.Bool        // the background read saw the client go
}

const (
	connIdle int32 = iota
	connActive
	connClosed
)

func (s *h1Server) track(c *h1conn, add bool) {
	s.mu.Lock()
	if add {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
	s.mu.Unlock()
}

func (c *h1conn) closeIfIdle() {
	if c.state.CompareAndSwap(connIdle, connClosed) {
		_ = c.rwc.Close()
	}
}

func (s *h1Server) serveConn(rwc net.Conn) {
	s.mu.Lock()
	s.raw[rwc] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.raw, rwc)
		s.mu.Unlock()
	}()
	c := &h1conn{srv: s, rwc: rwc, addr: rwc.RemoteAddr().String(), ctx: context.Background()}
	if s.connFn != nil {
		c.ctx = s.connFn(c.ctx, rwc)
	}
	if tc, ok := rwc.(*tls.Conn); ok {
		if d := *s.lim.RequestHeadersTimeout; d > 0 {
			_ = rwc.SetDeadline(time.Now().Add(d))
		}
		if err := tc.HandshakeContext(c.ctx); err != nil {
			s.log.Debug("TLS handshake failed", "remote", c.addr, "err", err)
			_ = rwc.Close()
			return
		}
		_ = rwc.SetDeadline(time.Time{})
		st := tc.ConnectionState()
		c.tls = &st
		if st.NegotiatedProtocol == http2.NextProtoTLS {
			s.h2(c.ctx, rwc)
			return
		}
	}
	s.track(c, true)
	defer s.track(c, false)
	if s.closing.Load() {
		_ = rwc.Close()
		return
	}
	c.cr.c = rwc
	c.br = bufio.NewReaderSize(&c.cr, 4<<10)
	c.bw = bufio.NewWriterSize(rwc, 4<<10)
	c.hdr = http.Header{}
	c.w.hdr = http.Header{}
	c.head.Reset()
	if c.isH2Preface() {
		c.state.Store(connActive) // its streams drain by GOAWAY, not by closing it as idle
		s.h2(c.ctx, &replayConn{Conn: rwc, r: c.br})
		return
	}
	for c.serveOne() {
	}
	if c.cancelReq != nil {
		c.cancelReq()
	}
	if c.state.Swap(connClosed) != connClosed {
		_ = rwc.Close()
	}
}

// isH2Preface reports whether the connection opens with HTTP/2's client
// preface (h2c with prior knowledge).
func (c *h1conn) isH2Preface() bool {
	const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	c.setReadDeadline(idleTimeout)
	b, err := c.br.Peek(1)
	if err != nil || b[0] != 'P' {
		return false
	}
	for i := 2; i <= len(preface); i++ {
		b, err = c.br.Peek(i)
		if err != nil || string(b) != preface[:i] {
			return false
		}
	}
	return true
}

// setReadDeadline sets the read deadline to now+d, unless the one set is
// already within an eighth of d of that (a timer update per request is
// not free); d 0 clears it.
func (c *h1conn) setReadDeadline(d time.Duration) {
	if d <= 0 {
		if !c.deadline.IsZero() {
			c.deadline = time.Time{}
			_ = c.rwc.SetReadDeadline(c.deadline)
		}
		return
	}
	now := time.Now()
	want := now.Add(d)
	if !c.deadline.IsZero() && c.deadline.After(now) && want.Sub(c.deadline) < d/8 && c.deadline.Sub(want) < d/8 {
		return
	}
	c.deadline = want
	_ = c.rwc.SetReadDeadline(want)
}

// serveOne reads and serves one request; it reports whether the
// connection stays open for the next.
func (c *h1conn) serveOne() bool {
	s := c.srv
	raw, inBuf, err := c.readHead()
	if err != nil {
		var pe *http1.Error
		if errors.As(err, &pe) {
			c.refuse(pe.Status, pe.Reason)
		}
		return false
	}
	if !c.state.CompareAndSwap(connIdle, connActive) {
		return false // closed by Shutdown meanwhile
	}
	if err := http1.ParseRequest(raw, &c.head, s.hlim); err != nil {
		pe := err.(*http1.Error)
		c.refuse(pe.Status, pe.Reason)
		return false
	}
	req, err := c.request(raw)
	if inBuf {
		_, _ = c.br.Discard(len(raw))
	}
	if err != nil {
		c.refuse(http.StatusBadRequest, err.Error())
		return false
	}
	c.served++
	w := &c.w
	w.reset(c)
	if e := c.head.Expect; e != nil && !equalFoldBytes(e, "100-continue") {
		c.refuse(http.StatusExpectationFailed, "unsupported expectation "+strconv.Quote(string(e)))
		return false
	}
	if max := *s.lim.MaxRequestsPerConnection; max > 0 && c.served >= max {
		w.closeAfter = true
	}
	if c.head.Close || s.closing.Load() {
		w.closeAfter = true
	}
	c.startWatch(c.cancelReq)
	ok := c.serveHandler(w, req)
	c.stopWatch()
	if w.hijacked || !ok {
		return false
	}
	w.finish()
	if w.err != nil || w.closeAfter || c.bgGone.Load() {
		return false
	}
	if !c.body.finished.Load() && !c.body.discard() {
		return false
	}
	return c.state.CompareAndSwap(connActive, connIdle) && !s.closing.Load()
}

// serveHandler runs the handler; a panic ends the connection without
// finishing the response (http.ErrAbortHandler: an upstream that broke
// mid-body; anything else is logged with its stack, as net/http does).
func (c *h1conn) serveHandler(w *h1response, r *http.Request) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			ok = false
			if p != http.ErrAbortHandler {
				buf := make([]byte, 16<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.srv.log.Error("panic serving a request", "remote", c.addr, "panic", p, "stack", string(buf))
			}
		}
	}()
	c.srv.h.ServeHTTP(w, r)
	return true
}

// readHead reads the next request head, waiting idleTimeout for its first
// byte and request_headers_timeout from then on. inBuf says the head is
// still in br (to be discarded once used); otherwise it was copied to big.
func (c *h1conn) readHead() (head []byte, inBuf bool, err error) {
	s := c.srv
	// Empty lines before a request line are ignored (RFC 9112 §2.2).
	c.setReadDeadline(idleTimeout)
	for {
		b, err := c.br.Peek(1)
		if err != nil {
			return nil, false, err
		}
		if b[0] != '\r' && b[0] != '\n' {
			break
		}
		_, _ = c.br.Discard(1)
	}
	from := 0
	timed := false
	for {
		n := c.br.Buffered()
		b, _ := c.br.Peek(n)
		if end := http1.HeadEnd(b, from); end > 0 {
			if timed {
				c.setReadDeadline(idleTimeout)
			}
			return b[:end], true, nil
		}
		from = n
		if !timed {
			// The head did not come whole in one read: from now on it
			// has request_headers_timeout to complete (slowloris).
			timed = true
			if d := *s.lim.RequestHeadersTimeout; d > 0 {
				c.deadline = time.Now().Add(d)
				_ = c.rwc.SetReadDeadline(c.deadline)
			}
		}
		if n == c.br.Size() {
			head, err := c.readBigHead(b)
			if timed {
				c.setReadDeadline(idleTimeout)
			}
			return head, false, err
		}
		if _, err := c.br.Peek(n + 1); err != nil {
			return nil, false, err
		}
	}
}

// readBigHead reads a head longer than br's buffer into c.big, line by
// line (so nothing past the head is read), up to the limit.
func (c *h1conn) readBigHead(first []byte) ([]byte, error) {
	max := c.srv.hlim.MaxHeaderBytes
	c.big = append(c.big[:0], first...)
	_, _ = c.br.Discard(len(first))
	for {
		if max > 0 && len(c.big) > max {
			return nil, &http1.Error{Status: http.StatusRequestHeaderFieldsTooLarge, Reason: "request head larger than " + strconv.Itoa(max) + " bytes"}
		}
		from := len(c.big)
		line, err := c.br.ReadSlice('\n')
		c.big = append(c.big, line...)
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
		if end := http1.HeadEnd(c.big, from); end > 0 {
			return c.big[:end], nil
		}
	}
}

// refuse answers a request the engine will not serve and closes the
// connection gracefully: the rest of what the client sent is read and
// dropped (up to discardLimit, for a second at most) after the answer,
// so that the client reads it rather than a reset.
func (c *h1conn) refuse(status int, reason string) {
	body := reason + "\n"
	b := c.bw.AvailableBuffer()
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nContent-Type: text/plain\r\nX-Sidemesh-Local-Reply: true\r\nConnection: close\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	_ = c.rwc.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.bw.Write(b)
	if c.bw.Flush() != nil {
		return
	}
	if cw, ok := c.rwc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.rwc.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.CopyN(io.Discard, c.rwc, discardLimit)
	if c.srv.log.Enabled(context.Background(), slog.LevelDebug) {
		c.srv.log.Debug("request refused", "status", status, "reason", reason, "remote", c.addr)
	}
}

// request builds the handler's view of the parsed head. Every string in
// it is a substring of one copy of the head; the header map and the
// request are the connection's, reused request after request.
func (c *h1conn) request(raw []byte) (*http.Request, error) {
	h := &c.head
	sub := http1.NewStrings(raw).Of
	target := sub(h.Target)
	c.url = url.URL{}
	host := sub(h.Host)
	switch {
	case len(target) > 0 && target[0] == '/' && noneOf(target, "%#"):
		path, query, _ := cut(target, '?')
		c.url.Path, c.url.RawQuery = path, query
	case string(h.Method) == http.MethodConnect && target[0] != '/':
		c.url.Host = target
		host = target
	default:
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return nil, errors.New("invalid request target " + strconv.Quote(target))
		}
		c.url = *u
		if u.Host != "" {
			host = u.Host // absolute-form: the target's authority wins (RFC 9112 §3.2.2)
		}
	}
	clear(c.hdr)
	if cap(c.vals) < len(h.Fields) {
		c.vals = make([]string, 0, len(h.Fields)+8)
	}
	c.vals = c.vals[:0]
	var trailer http.Header
	for _, f := range h.Fields {
		k := textproto.CanonicalMIMEHeaderKey(sub(f.Name))
		switch k {
		case "Host", "Transfer-Encoding":
			continue // net/http's Request holds these outside Header
		case "Trailer":
			if h.Chunked {
				trailer = declaredTrailers(trailer, sub(f.Value))
			}
		}
		v := sub(f.Value)
		if vv, ok := c.hdr[k]; ok {
			c.hdr[k] = append(vv, v)
			continue
		}
		c.vals = append(c.vals, v)
		n := len(c.vals)
		c.hdr[k] = c.vals[n-1 : n : n]
	}
	if c.req == nil {
		// One request per connection, its context made once: cancelled
		// when the client is seen gone (which ends the connection too)
		// and when the connection ends.
		var ctx context.Context
		ctx, c.cancelReq = context.WithCancel(c.ctx)
		c.reqCtx = (&http.Request{}).WithContext(ctx)
		c.req = new(http.Request)
	}
	r := c.req
	*r = *c.reqCtx
	r.Method = method(h.Method, sub)
	r.URL = &c.url
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1.1", 1, h.Minor
	r.Header = c.hdr
	r.Host = host
	r.RemoteAddr = c.addr
	r.RequestURI = target
	r.TLS = c.tls
	r.Close = h.Close
	r.Trailer = trailer
	r.Body = http.NoBody
	if h.Minor == 0 {
		r.Proto = "HTTP/1.0"
	}
	c.body.reset(c)
	switch {
	case h.Chunked:
		r.TransferEncoding = chunkedTE
		r.ContentLength = -1
		c.body.chunked = true
		if c.chunk == nil {
			c.chunk = http1.NewChunkedReader(c.br, c.srv.hlim)
		} else {
			c.chunk.Reset(c.br, c.srv.hlim)
		}
		r.Body = &c.body
	case h.ContentLength > 0:
		r.ContentLength = h.ContentLength
		c.body.left = h.ContentLength
		r.Body = &c.body
	default:
		c.body.finished.Store(true)
	}
	if r.Body != http.NoBody && h.Expect != nil {
		c.body.expect = true
	}
	return r, nil
}

var chunkedTE = []string{"chunked"}

// method returns the method, without a copy for the common ones.
func method(m []byte, sub func([]byte) string) string {
	switch string(m) {
	case http.MethodGet:
		return http.MethodGet
	case http.MethodPost:
		return http.MethodPost
	case http.MethodPut:
		return http.MethodPut
	case http.MethodHead:
		return http.MethodHead
	case http.MethodDelete:
		return http.MethodDelete
	case http.MethodPatch:
		return http.MethodPatch
	case http.MethodOptions:
		return http.MethodOptions
	}
	return sub(m)
}

func declaredTrailers(t http.Header, v string) http.Header {
	for v != "" {
		var k string
		k, v, _ = cut(v, ',')
		k = textproto.TrimString(k)
		if k == "" {
			continue
		}
		if t == nil {
			t = http.Header{}
		}
		t[textproto.CanonicalMIMEHeaderKey(k)] = nil
	}
	return t
}

func cut(s string, sep byte) (before, after string, found bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == sep {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func noneOf(s, chars string) bool {
	for i := 0; i < len(s); i++ {
		for j := 0; j < len(chars); j++ {
			if s[i] == chars[j] {
				return false
			}
		}
	}
	return true
}

func equalFoldBytes(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		x, y := b[i]|0x20, s[i]|0x20
		if x != y {
			return false
		}
	}
	return true
}

// h1body is a request body as its framing delimits it.
type h1body struct {
	c        *h1conn
	left     int64 // Content-Length bytes not yet read
	chunked  bool
	expect   bool // send 100 Continue before the first read
	finished atomic.Bool
	err      error
}

func (b *h1body) reset(c *h1conn) {
	b.c, b.left, b.chunked, b.expect, b.err = c, 0, false, false, nil
	b.finished.Store(false)
}

func (b *h1body) Read(p []byte) (int, error) {
	if b.finished.Load() {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	c := b.c
	if b.expect {
		b.expect = false
		if !c.w.wroteHeader {
			_, _ = c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			if err := c.bw.Flush(); err != nil {
				b.err = err
				return 0, err
			}
		}
	}
	if d := *c.srv.lim.StreamIdleTimeout; d > 0 {
		c.setReadDeadline(d)
	}
	if b.chunked {
		n, err := c.chunk.Read(p)
		if err == io.EOF {
			if t := c.req.Trailer; t != nil {
				for _, f := range c.chunk.Trailers {
					k := textproto.CanonicalMIMEHeaderKey(string(f.Name))
					if _, ok := t[k]; ok {
						t[k] = append(t[k], string(f.Value))
					}
				}
			}
			b.finished.Store(true)
		} else if err != nil {
			err = bodyError(err)
			b.err = err
		}
		return n, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := c.br.Read(p)
	b.left -= int64(n)
	if b.left == 0 {
		b.finished.Store(true)
		return n, io.EOF
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		err = bodyError(err)
		b.err = err
	}
	return n, err
}

// errStreamIdle: a request body stalled longer than stream_idle_timeout
// (answered 408 when nothing was answered yet, as Envoy does).
var errStreamIdle = errors.New("request body idle longer than stream_idle_timeout")

func bodyError(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return errStreamIdle
	}
	return err
}

// Close leaves what is unread to the engine (discarded, or the
// connection closed).
func (b *h1body) Close() error { return nil }

// discard reads what the handler left of the body, up to discardLimit;
// it reports whether the connection can serve another request.
func (b *h1body) discard() bool {
	if b.err != nil || b.expect {
		return false // nothing was asked of the client: do not wait for it
	}
	n, _ := io.CopyN(io.Discard, b, discardLimit+1)
	return n <= discardLimit && b.finished.Load()
}

// startWatch arms the client watch for the request in flight.
func (c *h1conn) startWatch(cancel context.CancelFunc) {
	c.wmu.Lock()
	c.cancel, c.watchOff = cancel, false
	c.wmu.Unlock()
	if c.watch == nil {
		c.watch = time.AfterFunc(clientWatchDelay, c.onWatch)
	} else {
		c.watch.Reset(clientWatchDelay)
	}
}

// onWatch: the request is taking a while; once its body is read, a
// background read notices the client going away (and cancels the
// request) or keeps the first byte of the next request.
func (c *h1conn) onWatch() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.watchOff || c.bgDone != nil || !c.body.finished.Load() || c.br.Buffered() > 0 {
		return
	}
	done := make(chan struct{})
	c.bgDone = done
	cancel := c.cancel
	go func() {
		defer close(done)
		var b [1]byte
		n, err := c.rwc.Read(b[:])
		if n == 1 {
			c.cr.pending, c.cr.has = b[0], true
			return
		}
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			c.bgGone.Store(true)
			cancel()
		}
	}()
}

// stopWatch disarms the watch and ends its background read, if any.
func (c *h1conn) stopWatch() {
	c.watch.Stop()
	c.wmu.Lock()
	c.watchOff = true
	done := c.bgDone
	c.bgDone = nil
	c.wmu.Unlock()
	if done != nil {
		_ = c.rwc.SetReadDeadline(aLongTimeAgo)
		<-done
		c.deadline = aLongTimeAgo // force the next setReadDeadline
	}
}

var aLongTimeAgo = time.Unix(1, 0)

// connReader is the connection as br reads it: first a byte the
// background read took, if any.
type connReader struct {
	c       net.Conn
	pending byte
	has     bool
}

func (r *connReader) Read(p []byte) (int, error) {
	if r.has && len(p) > 0 {
		r.has = false
		p[0] = r.pending
		return 1, nil
	}
	return r.c.Read(p)
}

// replayConn is a plaintext connection whose first bytes are in r (read
// while sniffing).
type replayConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }
