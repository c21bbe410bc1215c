package sidecar

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/http1"
)

// h1response is the engine's http.ResponseWriter: the head goes out with
// the first body bytes (one write for a small response), the body framed
// by Content-Length when the handler set it, chunked otherwise (close-
// delimited for an HTTP/1.0 client), trailers after a chunked body. It
// adds nothing of its own (no Date, no Content-Type sniffing: a proxy
// relays what the upstream sent).
type h1response struct {
	c           *h1conn
	hdr         http.Header
	status      int
	wroteHeader bool // the final status is set
	headSent    bool
	bodyless    bool  // HEAD, 1xx, 204, 304
	cl          int64 // Content-Length, -1 none
	written     int64
	chunked     bool
	closeAfter  bool
	hijacked    bool
	err         error
}

func (w *h1response) reset(c *h1conn) {
	clear(w.hdr)
	*w = h1response{c: c, hdr: w.hdr, cl: -1}
}

func (w *h1response) Header() http.Header { return w.hdr }

func (w *h1response) WriteHeader(code int) {
	if w.wroteHeader || w.hijacked {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		w.writeInterim(code)
		return
	}
	w.status, w.wroteHeader = code, true
}

// writeInterim sends a 1xx response at once.
func (w *h1response) writeInterim(code int) {
	c := w.c
	if c.head.Minor == 0 {
		return // HTTP/1.0 clients get no interim responses
	}
	b := c.bw.AvailableBuffer()
	b = appendStatusLine(b, code)
	b = appendFields(b, w.hdr, nil)
	b = append(b, "\r\n"...)
	_, _ = c.bw.Write(b)
	if err := c.bw.Flush(); err != nil && w.err == nil {
		w.err = err
	}
}

func (w *h1response) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(false)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.bodyless {
		return 0, http.ErrBodyNotAllowed
	}
	if w.cl >= 0 && w.written+int64(len(p)) > w.cl {
		return 0, http.ErrContentLength
	}
	c := w.c
	if d := *c.srv.lim.StreamIdleTimeout; d > 0 && len(p) > c.bw.Available() {
		_ = c.rwc.SetWriteDeadline(time.Now().Add(d))
	}
	var n int
	if w.chunked {
		if len(p) == 0 {
			return 0, nil
		}
		b := c.bw.AvailableBuffer()
		b = strconv.AppendInt(b, int64(len(p)), 16)
		b = append(b, "\r\n"...)
		if _, w.err = c.bw.Write(b); w.err == nil {
			n, w.err = c.bw.Write(p)
		}
		if w.err == nil {
			_, w.err = c.bw.WriteString("\r\n")
		}
	} else {
		n, w.err = c.bw.Write(p)
	}
	w.written += int64(n)
	return n, w.err
}

// sendHead writes the status line and fields, choosing the framing.
func (w *h1response) sendHead(final bool) {
	c := w.c
	w.headSent = true
	code := w.status
	w.bodyless = code == http.StatusNoContent || code == http.StatusNotModified || code < 200 || c.req.Method == http.MethodHead
	if v := w.hdr["Content-Length"]; len(v) > 0 {
		if n, err := strconv.ParseInt(v[0], 10, 64); err == nil && n >= 0 {
			w.cl = n
		} else {
			delete(w.hdr, "Content-Length")
		}
	}
	if hasToken(w.hdr["Connection"], "close") || c.srv.closing.Load() {
		w.closeAfter = true // shutting down: this is the connection's last answer
	}
	var framing string
	switch {
	case w.cl >= 0 || w.bodyless:
	case final:
		w.cl = 0
		framing = "Content-Length: 0\r\n"
	case c.head.Minor == 1:
		w.chunked = true
		framing = "Transfer-Encoding: chunked\r\n"
	default:
		w.closeAfter = true // HTTP/1.0: the body ends with the connection
	}
	if c.head.Minor == 0 {
		w.closeAfter = true
	}
	b := c.bw.AvailableBuffer()
	b = appendStatusLine(b, code)
	b = appendFields(b, w.hdr, w)
	b = append(b, framing...)
	if w.closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	_, w.err = c.bw.Write(b)
}

// finish ends the response: the head if nothing was written, the last
// chunk and trailers, and the flush.
func (w *h1response) finish() {
	if w.hijacked {
		return
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(true)
	}
	c := w.c
	if w.chunked && w.err == nil {
		b := c.bw.AvailableBuffer()
		b = append(b, "0\r\n"...)
		b = appendTrailers(b, w.hdr)
		b = append(b, "\r\n"...)
		_, w.err = c.bw.Write(b)
	}
	if !w.bodyless && w.cl >= 0 && w.written < w.cl {
		w.closeAfter = true // a short body: only closing tells the client
	}
	if w.err == nil {
		w.err = c.bw.Flush()
	}
}

func (w *h1response) Flush() { _ = w.FlushError() }

// FlushError sends what is buffered (http.ResponseController uses it).
func (w *h1response) FlushError() error {
	if w.hijacked {
		return http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(false)
	}
	if w.err == nil {
		w.err = w.c.bw.Flush()
	}
	return w.err
}

// Hijack hands the connection to the handler (an upgrade): the engine
// forgets it.
func (w *h1response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.headSent {
		return nil, nil, errors.New("sidecar: hijack after the response head")
	}
	c := w.c
	c.stopWatch()
	w.hijacked = true
	c.state.Store(connClosed)
	_ = c.rwc.SetDeadline(time.Time{})
	return c.rwc, bufio.NewReadWriter(c.br, c.bw), nil
}

// SetReadDeadline and SetWriteDeadline serve http.ResponseController.
func (w *h1response) SetReadDeadline(t time.Time) error  { return w.c.rwc.SetReadDeadline(t) }
func (w *h1response) SetWriteDeadline(t time.Time) error { return w.c.rwc.SetWriteDeadline(t) }

func appendStatusLine(b []byte, code int) []byte {
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	if t := http.StatusText(code); t != "" {
		b = append(b, t...)
	} else {
		b = append(b, "status code "...)
		b = strconv.AppendInt(b, int64(code), 10)
	}
	return append(b, "\r\n"...)
}

// appendFields writes h's fields, leaving out those the engine writes
// itself and the trailer values; a CR or LF in a value becomes a space
// (as net/http does), so a handler cannot split the response.
func appendFields(b []byte, h http.Header, w *h1response) []byte {
	for k, vv := range h {
		switch k {
		case "Connection", "Transfer-Encoding", "Keep-Alive", "Proxy-Connection":
			continue
		case "Trailer":
			if w == nil || !w.chunked {
				continue
			}
		}
		if strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		for _, v := range vv {
			b = append(b, k...)
			b = append(b, ": "...)
			b = http1.AppendValue(b, v)
			b = append(b, "\r\n"...)
		}
	}
	return b
}

// appendTrailers writes the trailers: the fields the Trailer field
// declared and those set with http.TrailerPrefix.
func appendTrailers(b []byte, h http.Header) []byte {
	for _, decl := range h["Trailer"] {
		for decl != "" {
			var k string
			k, decl, _ = cut(decl, ',')
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			for _, v := range h[k] {
				b = append(b, k...)
				b = append(b, ": "...)
				b = http1.AppendValue(b, v)
				b = append(b, "\r\n"...)
			}
		}
	}
	for k, vv := range h {
		if !strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		for _, v := range vv {
			b = append(b, k[len(http.TrailerPrefix):]...)
			b = append(b, ": "...)
			b = http1.AppendValue(b, v)
			b = append(b, "\r\n"...)
		}
	}
	return b
}

func hasToken(vv []string, tok string) bool {
	for _, v := range vv {
		for v != "" {
			var t string
			t, v, _ = cut(v, ',')
			if strings.EqualFold(strings.TrimSpace(t), tok) {
				return true
			}
		}
	}
	return false
}
