package sidecar

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// leanH1 is a lean HTTP/1.1 upstream client: one pooled connection per
// request, the request written and the response read on the caller's
// goroutine. net/http's Transport hands each request to two goroutines per
// connection (writeLoop, readLoop) and peeks the connection after every
// response; on a sidecar that is a third of the CPU per request (bench/).
//
// It handles what a proxy sends upstream over HTTP/1.1: any method, bodies
// (Content-Length or chunked), 1xx interim responses, trailers, HEAD and
// bodyless statuses, Connection: close either way, cancellation, and a pooled
// connection the server closed while idle (the request is retried once on a
// fresh connection, as net/http does). Upgrades, Expect: 100-continue and
// bodies that cannot be replayed go to the fallback (net/http) transport.
type leanH1 struct {
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	maxIdle     int
	idleTimeout time.Duration
	fallback    http.RoundTripper

	mu   sync.Mutex
	idle map[string][]*h1Conn
}

type h1Conn struct {
	conn   net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	addr   string
	idleAt time.Time
}

var errH1Stale = errors.New("h1: reused connection closed by the server before answering")

func newLeanH1(dial func(ctx context.Context, network, addr string) (net.Conn, error), maxIdle int, idleTimeout time.Duration, fallback http.RoundTripper) *leanH1 {
	return &leanH1{dial: dial, maxIdle: maxIdle, idleTimeout: idleTimeout, fallback: fallback, idle: map[string][]*h1Conn{}}
}

func (t *leanH1) get(ctx context.Context, addr string) (*h1Conn, bool, error) {
	now := time.Now()
	t.mu.Lock()
	for {
		list := t.idle[addr]
		if len(list) == 0 {
			break
		}
		pc := list[len(list)-1]
		list[len(list)-1] = nil
		t.idle[addr] = list[:len(list)-1]
		if t.idleTimeout > 0 && now.Sub(pc.idleAt) > t.idleTimeout {
			t.mu.Unlock()
			pc.conn.Close()
			t.mu.Lock()
			continue
		}
		t.mu.Unlock()
		return pc, true, nil
	}
	t.mu.Unlock()
	c, err := t.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	return &h1Conn{conn: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 16<<10), addr: addr}, false, nil
}

func (t *leanH1) put(pc *h1Conn) {
	pc.idleAt = time.Now()
	t.mu.Lock()
	if len(t.idle[pc.addr]) < t.maxIdle {
		t.idle[pc.addr] = append(t.idle[pc.addr], pc)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	pc.conn.Close()
}

// CloseIdleConnections closes every pooled connection.
func (t *leanH1) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[string][]*h1Conn{}
	t.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			pc.conn.Close()
		}
	}
	if ci, ok := t.fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// RoundTrip implements http.RoundTripper for one attempt.
func (t *leanH1) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get("Upgrade") != "" || req.Header.Get("Expect") != "" || !replayable(req) {
		// Upgrades and 100-continue need net/http's machinery; a body we
		// could not replay must not meet a pooled connection the server
		// closed while idle, and net/http watches its idle connections.
		return t.fallback.RoundTrip(req)
	}
	ctx := req.Context()
	for try := 0; ; try++ {
		pc, reused, err := t.get(ctx, req.URL.Host)
		if err != nil {
			return nil, err
		}
		resp, err := t.exchange(ctx, pc, req, reused)
		if err == nil {
			return resp, nil
		}
		if errors.Is(err, errH1Stale) && try == 0 && replayable(req) {
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

// exchange writes req on pc and reads the response head.
func (t *leanH1) exchange(ctx context.Context, pc *h1Conn, req *http.Request, reused bool) (*http.Response, error) {
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
	if err := req.Write(pc.bw); err != nil {
		if reused && isStale(err) {
			return fail(errH1Stale)
		}
		return fail(err)
	}
	if err := pc.bw.Flush(); err != nil {
		if reused && isStale(err) {
			return fail(errH1Stale)
		}
		return fail(err)
	}
	var resp *http.Response
	for {
		r, err := http.ReadResponse(pc.br, req)
		if err != nil {
			if reused && isStale(err) {
				return fail(errH1Stale)
			}
			return fail(err)
		}
		if r.StatusCode >= 100 && r.StatusCode < 200 && r.StatusCode != http.StatusSwitchingProtocols {
			continue // interim response: wait for the final one
		}
		resp = r
		break
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// Not expected here (upgrades use the fallback); never reuse.
		stop()
		resp.Body = &h1Body{rc: resp.Body, pc: pc, t: t, stop: stop, noReuse: true}
		return resp, nil
	}
	reuse := !resp.Close && !req.Close
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
	resp.Body = &h1Body{rc: resp.Body, pc: pc, t: t, stop: stop, noReuse: !reuse}
	return resp, nil
}

// isStale: the server closed the (reused) connection before answering.
func isStale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// h1Body returns the connection to the pool once the body is read to the end.
type h1Body struct {
	rc      io.ReadCloser
	pc      *h1Conn
	t       *leanH1
	stop    func() bool
	noReuse bool
	done    bool // EOF seen and the connection handed back (or closed)
	closed  bool
	mu      sync.Mutex
}

func (b *h1Body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	}
	return n, err
}

func (b *h1Body) finish(eof bool) {
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

func (b *h1Body) Close() error {
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
func (b *h1Body) Write(p []byte) (int, error) { return b.pc.conn.Write(p) }
