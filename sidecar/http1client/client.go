package http1client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/http1"
)

// Transport is a lean HTTP/1.1 upstream client: one pooled connection per
// request, the request written and the response read on the caller's
// goroutine. net/http's Transport hands each request to two goroutines per
// connection (writeLoop, readLoop) and peeks the connection after every
// response; on a sidecar that is a third of the CPU per request (bench/).
//
// It handles what a proxy sends upstream over HTTP/1.1: any method, bodies
// (Content-Length or chunked), 1xx interim responses, trailers, HEAD and
// bodyless statuses, Connection: close either way, cancellation, and a pooled
// connection the server closed while idle (checked before reuse; a request
// that still meets a closing connection is retried once on a fresh one under
// net/http's rules). Upgrades, Expect: 100-continue and bodies that cannot be
// replayed go to the fallback (net/http) transport.
type Transport struct {
	dial           DialFunc
	maxIdle        int
	idleTimeout    time.Duration
	maxHeaderBytes int64 // response head bound (net/http's MaxResponseHeaderBytes default)
	fallback       http.RoundTripper

	mu   sync.Mutex
	idle map[string][]*pconn
}

type pconn struct {
	conn      net.Conn
	raw       syscall.RawConn // for the liveness check before reuse (nil: none)
	br        *bufio.Reader   // reads through the pconn (its readLimit)
	bw        *bufio.Writer   // writes through the pconn (its nwrite)
	addr      string
	idleAt    time.Time   // guarded by Transport.mu while pooled
	idleTimer *time.Timer // closes the connection once idle too long
	readLimit int64       // bytes reads may still take (bounds the response head)
	nwrite    int64       // bytes written to the connection
	head      http1.Head  // the response head last checked
	noReuse   bool        // a response was read through a copy: close after it
}

// Read bounds what a response head may take, as net/http's persistConn does.
func (pc *pconn) Read(p []byte) (int, error) {
	if pc.readLimit <= 0 {
		return 0, errHeaderTooBig
	}
	if int64(len(p)) > pc.readLimit {
		p = p[:pc.readLimit]
	}
	n, err := pc.conn.Read(p)
	pc.readLimit -= int64(n)
	return n, err
}

// Write counts what reached the connection: a request of which nothing was
// written can be retried whatever its method.
func (pc *pconn) Write(p []byte) (int, error) {
	n, err := pc.conn.Write(p)
	pc.nwrite += int64(n)
	return n, err
}

var (
	errStale        = errors.New("h1: reused connection closed by the server before answering")
	errHeaderTooBig = errors.New("h1: response headers too large")
)

// DialFunc dials one upstream connection.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// New returns a Transport that dials with dial, keeps at most maxIdle idle
// connections per address, closes a connection idle for idleTimeout (0:
// never) and sends what it does not handle itself to fallback. A dialed
// connection that wraps a socket can expose it with a NetConn() net.Conn
// method, for the liveness check before reuse.
func New(dial DialFunc, maxIdle int, idleTimeout time.Duration, fallback http.RoundTripper) *Transport {
	return &Transport{dial: dial, maxIdle: maxIdle, idleTimeout: idleTimeout, maxHeaderBytes: 10 << 20, fallback: fallback, idle: map[string][]*pconn{}}
}

// get returns a pooled connection (reused) or, failing that or when fresh is
// set, a new one.
// get takes a pooled connection to addr (unless fresh) or dials one.
// check: look at a pooled connection's socket before using it (one
// syscall), for a request that could not be sent again if the server
// had closed it while idle; an idempotent request that meets such a
// connection is retried on a fresh one instead.
func (t *Transport) get(ctx context.Context, addr string, fresh, check bool) (*pconn, bool, error) {
	now := time.Now()
	t.mu.Lock()
	for !fresh {
		list := t.idle[addr]
		if len(list) == 0 {
			break
		}
		pc := list[len(list)-1]
		list[len(list)-1] = nil
		t.idle[addr] = list[:len(list)-1]
		if len(list) == 1 {
			delete(t.idle, addr) // endpoints come and go
		}
		if pc.idleTimer != nil {
			pc.idleTimer.Stop()
		}
		expired := t.idleTimeout > 0 && now.Sub(pc.idleAt) > t.idleTimeout
		t.mu.Unlock()
		if expired || !pc.usable(check) {
			pc.conn.Close()
			t.mu.Lock()
			continue
		}
		return pc, true, nil
	}
	t.mu.Unlock()
	c, err := t.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	pc := &pconn{conn: c, addr: addr}
	pc.br = bufio.NewReaderSize(pc, 16<<10)
	pc.bw = bufio.NewWriterSize(pc, 16<<10)
	nc := c
	if w, ok := nc.(interface{ NetConn() net.Conn }); ok {
		nc = w.NetConn() // a wrapper (connection accounting) around the socket
	}
	if sc, ok := nc.(syscall.Conn); ok {
		pc.raw, _ = sc.SyscallConn()
	}
	return pc, false, nil
}

// usable reports whether an idle connection can carry a request: the server
// neither closed it nor sent anything since the last response. Bytes that
// arrived unasked would be read as the next request's response (a HEAD or
// 204 answered with a body, a Content-Length shorter than the body).
func (pc *pconn) usable(check bool) bool {
	if pc.br.Buffered() > 0 {
		return false
	}
	if pc.raw == nil || !check {
		return true
	}
	return connIdleOK(pc.raw)
}

func (t *Transport) put(pc *pconn) {
	t.mu.Lock()
	if len(t.idle[pc.addr]) < t.maxIdle {
		pc.idleAt = time.Now()
		if t.idleTimeout > 0 {
			if pc.idleTimer == nil {
				pc.idleTimer = time.AfterFunc(t.idleTimeout, func() { t.expire(pc) })
			} else {
				pc.idleTimer.Reset(t.idleTimeout)
			}
		}
		t.idle[pc.addr] = append(t.idle[pc.addr], pc)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	pc.conn.Close()
}

// expire closes pc if it is still pooled and has been idle too long.
func (t *Transport) expire(pc *pconn) {
	t.mu.Lock()
	list := t.idle[pc.addr]
	for i, p := range list {
		if p != pc {
			continue
		}
		if time.Since(pc.idleAt) < t.idleTimeout {
			break // pooled again since this timer fired; it was reset
		}
		copy(list[i:], list[i+1:])
		list[len(list)-1] = nil
		if len(list) == 1 {
			delete(t.idle, pc.addr)
		} else {
			t.idle[pc.addr] = list[:len(list)-1]
		}
		t.mu.Unlock()
		pc.conn.Close()
		return
	}
	t.mu.Unlock()
}

// CloseIdleConnections closes every pooled connection.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[string][]*pconn{}
	t.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			if pc.idleTimer != nil {
				pc.idleTimer.Stop()
			}
			pc.conn.Close()
		}
	}
	if ci, ok := t.fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// RoundTrip implements http.RoundTripper for one attempt.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get("Upgrade") != "" || req.Header.Get("Expect") != "" || !replayable(req) {
		// Upgrades and 100-continue need net/http's machinery; a body we
		// could not replay must not meet a pooled connection the server
		// closed while idle, and net/http watches its idle connections.
		return t.fallback.RoundTrip(req)
	}
	ctx := req.Context()
	for try := 0; ; try++ {
		// The retry takes a fresh connection: the pool may hold more
		// connections the server is closing.
		pc, reused, err := t.get(ctx, req.URL.Host, try > 0, !idempotent(req))
		if err != nil {
			return nil, err
		}
		resp, err := t.exchange(ctx, pc, req, reused)
		if err == nil {
			return resp, nil
		}
		if errors.Is(err, errStale) && try == 0 && replayable(req) {
			if req.GetBody != nil && req.Body != nil && req.Body != http.NoBody {
				b, gerr := req.GetBody()
				if gerr != nil {
					return nil, err
				}
				req.Body = b
			}
			continue // a fresh connection
		}
		return nil, err
	}
}

func replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// idempotent is net/http's Request.isReplayable method test: a request the
// server may have processed is only sent again if it is idempotent.
func idempotent(req *http.Request) bool {
	switch req.Method {
	case "", "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	_, k1 := req.Header["Idempotency-Key"]
	_, k2 := req.Header["X-Idempotency-Key"]
	return k1 || k2
}

// exchange writes req on pc and reads the response head.
func (t *Transport) exchange(ctx context.Context, pc *pconn, req *http.Request, reused bool) (*http.Response, error) {
	var canceled atomic.Bool
	stop := context.AfterFunc(ctx, func() {
		canceled.Store(true)
		_ = pc.conn.SetDeadline(time.Unix(1, 0)) // unblock reads and writes
	})
	fail := func(err error) (*http.Response, error) {
		stop()
		pc.conn.Close()
		if canceled.Load() {
			if cerr := ctx.Err(); cerr != nil {
				return nil, cerr
			}
		}
		return nil, err
	}
	// stale: the server closed the reused connection before any of the
	// response arrived. As in net/http, the request is retried if nothing
	// of it was written, or if it is idempotent (the server may have
	// processed it before closing, e.g. a handler that panicked).
	nwrite := pc.nwrite
	stale := func(err error) bool {
		return reused && isStale(err) && (pc.nwrite == nwrite || idempotent(req))
	}
	if err := writeRequest(pc.bw, req); err != nil {
		if stale(err) {
			return fail(errStale)
		}
		return fail(err)
	}
	if err := pc.bw.Flush(); err != nil {
		if stale(err) {
			return fail(errStale)
		}
		return fail(err)
	}
	pc.readLimit = t.maxHeaderBytes
	if _, err := pc.br.Peek(1); err != nil {
		if stale(err) {
			return fail(errStale)
		}
		return fail(err)
	}
	trace := httptrace.ContextClientTrace(ctx)
	var resp *http.Response
	for {
		br, raw, err := t.checkHead(pc)
		if err != nil {
			return fail(err)
		}
		r := response(pc, br, raw, req)
		_, _ = br.Discard(len(raw))
		if r.StatusCode >= 100 && r.StatusCode < 200 && r.StatusCode != http.StatusSwitchingProtocols {
			// Interim response: pass it on (ReverseProxy relays 103s) and
			// wait for the final one.
			if trace != nil && trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(r.StatusCode, textproto.MIMEHeader(r.Header)); err != nil {
					return fail(err)
				}
				pc.readLimit = t.maxHeaderBytes // as net/http: delivered heads are the user's to bound
			}
			continue
		}
		resp = r
		break
	}
	pc.readLimit = math.MaxInt64 // bodies are not bounded here
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// Not expected here (upgrades use the fallback); never reuse.
		stop()
		resp.Body = &respBody{rc: resp.Body, pc: pc, t: t, stop: stop, noReuse: true}
		return resp, nil
	}
	reuse := !resp.Close && !req.Close && !pc.noReuse
	if resp.Body == nil || resp.Body == http.NoBody || resp.ContentLength == 0 {
		if resp.Body != nil {
			resp.Body.Close()
		}
		resp.Body = http.NoBody
		if stop() && reuse {
			t.put(pc)
		} else {
			pc.conn.Close()
		}
		return resp, nil
	}
	resp.Body = &respBody{rc: resp.Body, pc: pc, t: t, stop: stop, noReuse: !reuse}
	return resp, nil
}

// ProtocolError is a response the client refuses: a malformed head or
// an ambiguous framing (package http1's rules). A proxy answers 502.
type ProtocolError struct{ Err error }

func (e *ProtocolError) Error() string { return "h1: bad response from upstream: " + e.Err.Error() }
func (e *ProtocolError) Unwrap() error { return e.Err }

// maxResponseHead bounds a response head (Envoy's max_response_headers_kb
// default, 60 KiB) and maxResponseFields its fields.
const (
	maxResponseHead   = 60 << 10
	maxResponseFields = 100
)

// checkHead reads the next response head without consuming it and checks
// it with package http1 (into pc.head); it returns the head's bytes and
// the reader that holds them first: pc.br, or for a head larger than
// pc.br's buffer, a reader over a copy of it followed by pc.br (the
// connection is then not reused). The caller discards the head from it.
func (t *Transport) checkHead(pc *pconn) (*bufio.Reader, []byte, error) {
	lim := http1.Limits{MaxHeaderBytes: maxResponseHead, MaxHeaders: maxResponseFields}
	from := 0
	for {
		n := max(pc.br.Buffered(), 1)
		b, err := pc.br.Peek(n)
		if end := http1.HeadEnd(b, from); end > 0 {
			if perr := http1.ParseResponse(b[:end], &pc.head, lim); perr != nil {
				return nil, nil, &ProtocolError{Err: perr}
			}
			return pc.br, b[:end], nil
		}
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return t.checkBigHead(pc, b, lim)
			}
			return nil, nil, err
		}
		from = len(b)
		if n == pc.br.Size() {
			return t.checkBigHead(pc, b, lim)
		}
		if _, err := pc.br.Peek(n + 1); err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) && n > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, nil, err
		}
	}
}

func (t *Transport) checkBigHead(pc *pconn, first []byte, lim http1.Limits) (*bufio.Reader, []byte, error) {
	big := append([]byte(nil), first...)
	_, _ = pc.br.Discard(len(first))
	for {
		if len(big) > lim.MaxHeaderBytes {
			return nil, nil, &ProtocolError{Err: fmt.Errorf("response head larger than %d bytes", lim.MaxHeaderBytes)}
		}
		from := len(big)
		line, err := pc.br.ReadSlice('\n')
		big = append(big, line...)
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return nil, nil, err
		}
		if end := http1.HeadEnd(big, from); end > 0 {
			if perr := http1.ParseResponse(big[:end], &pc.head, lim); perr != nil {
				return nil, nil, &ProtocolError{Err: perr}
			}
			pc.noReuse = true
			return bufio.NewReader(io.MultiReader(bytes.NewReader(big), pc.br)), big[:end], nil
		}
	}
}

// isStale: the server closed the (reused) connection before answering.
func isStale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// respBody returns the connection to the pool once the body is read to the end.
type respBody struct {
	rc      io.ReadCloser
	pc      *pconn
	t       *Transport
	stop    func() bool
	noReuse bool
	done    bool // EOF seen and the connection handed back (or closed)
	closed  bool
	mu      sync.Mutex
}

func (b *respBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	}
	return n, err
}

func (b *respBody) finish(eof bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return
	}
	b.done = true
	stillOurs := b.stop() // false: cancellation already poisoned the conn
	if eof && stillOurs && !b.noReuse {
		b.t.put(b.pc)
		return
	}
	b.pc.conn.Close()
}

func (b *respBody) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.finish(false)
	return nil
}

// Write lets ReverseProxy use a 101 response's body as the upgraded stream.
func (b *respBody) Write(p []byte) (int, error) { return b.pc.conn.Write(p) }
