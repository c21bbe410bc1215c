package sidecar

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// memConn is a connection that reads the same request forever and
// discards what is written: the engine alone, without sockets, client
// or backend.
type memConn struct {
	req []byte
	off int
	net.Conn
}

func (c *memConn) Read(p []byte) (int, error) {
	n := copy(p, c.req[c.off:])
	c.off = (c.off + n) % len(c.req)
	return n, nil
}
func (c *memConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) Close() error                     { return nil }
func (c *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

// BenchmarkH1Engine: one keep-alive request through the engine (head
// read and checked, the handler's request built, a 100-byte response
// with Content-Length written), per iteration; -benchmem shows what the
// engine allocates per request: one copy of the head (handlers keep
// strings of it: an access log line is written after the request).
func BenchmarkH1Engine(b *testing.B) {
	raw := "GET /api/v1/items?limit=10 HTTP/1.1\r\nHost: api\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\nX-Request-Id: 0d6b3a4e-8a1c-4f1e-9b7e-3c2d1e0f9a8b\r\n\r\n"
	body := []byte(strings.Repeat("x", 100))
	cl := []string{"100"}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Length"] = cl
		_, _ = w.Write(body)
	})
	var lim LimitsConfig
	lim.setDefaults()
	s := newH1Server(h, lim, slog.New(slog.DiscardHandler))
	mc := &memConn{req: []byte(raw)}
	c := &h1conn{srv: s, rwc: mc, addr: "127.0.0.1:1", ctx: b.Context()}
	c.cr.c = mc
	c.br = bufio.NewReaderSize(&c.cr, 4<<10)
	c.bw = bufio.NewWriterSize(io.Discard, 4<<10)
	c.hdr, c.w.hdr = http.Header{}, http.Header{}
	c.head.Reset()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !c.serveOne() {
			b.Fatal("connection closed")
		}
	}
}
