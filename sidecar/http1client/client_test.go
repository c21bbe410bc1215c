package http1client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A pooled connection the server closed while idle is not used (or, for an
// idempotent request that meets it closing, retried on a fresh one): the
// client never sees it. The POSTs wait for the close: a POST that races it
// is not retried (TestLeanH1NonIdempotentNotReplayed), as in net/http.
// Chunked bodies both ways, trailers, interim 103, HEAD, 204, 304 and a
// 1 MiB body, through the lean client.
// A client that leaves mid-body frees the connection and the accounting.
// rawH1Server serves raw TCP connections on 127.0.0.1: serve runs once per
// connection with its index (from 0).
func rawH1Server(t *testing.T, serve func(i int, c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(i int) {
				defer c.Close()
				serve(i, c, bufio.NewReader(c))
			}(i)
		}
	}()
	return ln.Addr().String()
}

// readRawRequest reads one request and its body; false at EOF or error.
func readRawRequest(br *bufio.Reader) (*http.Request, bool) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, false
	}
	_, _ = io.Copy(io.Discard, req.Body)
	return req, true
}

func newTestTransport(t *testing.T) *Transport {
	fb := &http.Transport{}
	tr := New((&net.Dialer{}).DialContext, 8, time.Hour, fb)
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func do(tr *Transport, ctx context.Context, method, url, body string, hdr ...string) (*http.Response, string, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body) // GetBody set: replayable
	}
	req, _ := http.NewRequestWithContext(ctx, method, url, rd)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

const rawOK = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

// Several pooled connections the server drops on their next request (not
// detectable before use): the one retry must take a fresh connection, not
// the next pooled one.
func TestStaleRetryTakesFreshConn(t *testing.T) {
	const n = 3
	var arrived atomic.Int64
	release := make(chan struct{})
	addr := rawH1Server(t, func(i int, c net.Conn, br *bufio.Reader) {
		if _, ok := readRawRequest(br); !ok {
			return
		}
		if arrived.Add(1) == n {
			close(release)
		}
		<-release // n requests in flight: n pooled connections
		_, _ = io.WriteString(c, rawOK)
		readRawRequest(br) // then drop the next request unanswered
	})
	tr := newTestTransport(t)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			_, _, err := do(tr, context.Background(), "GET", "http://"+addr+"/", "")
			errs <- err
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	resp, body, err := do(tr, context.Background(), "GET", "http://"+addr+"/", "")
	if err != nil || resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("GET after the server dropped its pooled connections: %v %q", err, body)
	}
}

// A non-idempotent request the server received on a reused connection and
// then dropped (a handler that did its work and panicked) is not sent
// again: the server may have processed it. Idempotent requests, and those
// marked with Idempotency-Key, are retried (net/http's rules).
func TestNonIdempotentNotReplayed(t *testing.T) {
	for _, tc := range []struct {
		method, key string
		retried     bool
	}{
		{"POST", "", false},
		{"PATCH", "", false},
		{"POST", "k1", true},
		{"PUT", "", false},
		{"GET", "", true},
	} {
		var seen atomic.Int64
		addr := rawH1Server(t, func(i int, c net.Conn, br *bufio.Reader) {
			if _, ok := readRawRequest(br); !ok {
				return
			}
			_, _ = io.WriteString(c, rawOK)
			req, ok := readRawRequest(br)
			if !ok {
				return
			}
			if req.Method == tc.method {
				seen.Add(1)
			}
			if i > 0 {
				_, _ = io.WriteString(c, rawOK) // the retry's connection answers
				return
			}
			// close unanswered
		})
		tr := newTestTransport(t)
		if _, _, err := do(tr, context.Background(), "GET", "http://"+addr+"/", ""); err != nil {
			t.Fatal(err)
		}
		var hdr []string
		if tc.key != "" {
			hdr = []string{"Idempotency-Key", tc.key}
		}
		body := "payload"
		if tc.method == "GET" {
			body = ""
		}
		_, _, err := do(tr, context.Background(), tc.method, "http://"+addr+"/", body, hdr...)
		if tc.retried {
			// The retry's fresh connection answers its first request.
			if err != nil {
				t.Fatalf("%s key=%q: %v", tc.method, tc.key, err)
			}
			continue
		}
		if err == nil {
			t.Fatalf("%s: succeeded: it was sent again", tc.method)
		}
		if got := seen.Load(); got != 1 {
			t.Fatalf("%s reached the server %d times", tc.method, got)
		}
	}
}

// Bytes the server sent beyond a response (a HEAD or 204 answered with a
// body, a short Content-Length) must not be read as the next request's
// response: that connection is not reused.
func TestUnsolicitedBytesNotReused(t *testing.T) {
	const smuggled = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
	for _, first := range []struct{ method, resp string }{
		{"HEAD", "HTTP/1.1 200 OK\r\nContent-Length: " + fmt.Sprint(len(smuggled)) + "\r\n\r\n" + smuggled},
		{"GET", "HTTP/1.1 204 No Content\r\n\r\n" + smuggled},
		{"GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + smuggled},
	} {
		addr := rawH1Server(t, func(i int, c net.Conn, br *bufio.Reader) {
			if i == 0 {
				if _, ok := readRawRequest(br); !ok {
					return
				}
				_, _ = io.WriteString(c, first.resp)
			}
			for {
				if _, ok := readRawRequest(br); !ok {
					return
				}
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
			}
		})
		tr := newTestTransport(t)
		if _, _, err := do(tr, context.Background(), first.method, "http://"+addr+"/", ""); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			_, body, err := do(tr, context.Background(), "GET", "http://"+addr+"/", "")
			if err != nil || body != "real" {
				t.Fatalf("after %q: GET %d got %q, %v", first.resp[:20], i, body, err)
			}
		}
	}
}

// A POST after the server closed its pooled connection while idle goes on
// a fresh connection (the idle check), though a POST is never retried.
func TestIdleClosedConnNotUsed(t *testing.T) {
	var closed, posts atomic.Int64
	addr := rawH1Server(t, func(i int, c net.Conn, br *bufio.Reader) {
		req, ok := readRawRequest(br)
		if !ok {
			return
		}
		if req.Method == "POST" {
			posts.Add(1)
		}
		_, _ = io.WriteString(c, rawOK)
		c.Close() // keep-alive answered, then closed while idle
		closed.Add(1)
	})
	tr := newTestTransport(t)
	for i := 0; i < 20; i++ {
		_, body, err := do(tr, context.Background(), "POST", "http://"+addr+"/", "data")
		if err != nil || body != "ok" {
			t.Fatalf("POST %d: %q %v", i, body, err)
		}
		want := int64(i + 1)
		eventually(t, 5*time.Second, "server closed", func() bool { return closed.Load() == want })
	}
	if posts.Load() != 20 {
		t.Fatalf("server saw %d POSTs, want 20", posts.Load())
	}
}

// Idle connections are closed after idle_timeout, not only when next used:
// they hold file descriptors and max_connections slots.
func TestIdleTimeoutClosesConn(t *testing.T) {
	var gone atomic.Int64
	addr := rawH1Server(t, func(i int, c net.Conn, br *bufio.Reader) {
		for {
			if _, ok := readRawRequest(br); !ok {
				gone.Add(1)
				return
			}
			_, _ = io.WriteString(c, rawOK)
		}
	})
	tr := New((&net.Dialer{}).DialContext, 8, 50*time.Millisecond, &http.Transport{})
	defer tr.CloseIdleConnections()
	for i := 0; i < 2; i++ { // the second reuses the conn: its timer is reset
		if _, _, err := do(tr, context.Background(), "GET", "http://"+addr+"/", ""); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "idle connection closed", func() bool { return gone.Load() == 1 })
	tr.mu.Lock()
	n := len(tr.idle)
	tr.mu.Unlock()
	if n != 0 {
		t.Fatalf("pool still lists %d addresses", n)
	}
	if _, body, err := do(tr, context.Background(), "GET", "http://"+addr+"/", ""); err != nil || body != "ok" {
		t.Fatalf("after expiry: %q %v", body, err)
	}
}

// A response head that never ends is bounded: 60 KiB, Envoy's
// max_response_headers_kb default (net/http: 10 MB), a protocol error.
func TestHugeResponseHeader(t *testing.T) {
	addr := rawH1Server(t, func(i int, c net.Conn, br *bufio.Reader) {
		if _, ok := readRawRequest(br); !ok {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: ")
		chunk := bytes.Repeat([]byte("a"), 32<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	tr := newTestTransport(t)
	tr.maxHeaderBytes = 256 << 10
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := do(tr, ctx, "GET", "http://"+addr+"/", "")
	var pe *ProtocolError
	if !errors.As(err, &pe) || ctx.Err() != nil || !strings.Contains(err.Error(), "response head larger than 61440 bytes") {
		t.Fatalf("endless header: %v (ctx %v)", err, ctx.Err())
	}
}

// Interim responses reach ReverseProxy's Got1xxResponse hook, which relays
// them (103 Early Hints) to the client, as net/http's Transport does.

// eventually polls cond until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

// A GET skips the idle check (a syscall per request): if its pooled
// connection was closed by the server while idle, the request is sent
// again on a fresh one, and the client never sees it.
func TestIdleClosedConnGETRetried(t *testing.T) {
	var closed atomic.Int64
	addr := rawH1Server(t, func(i int, c net.Conn, br *bufio.Reader) {
		if _, ok := readRawRequest(br); !ok {
			return
		}
		_, _ = io.WriteString(c, rawOK)
		c.Close() // keep-alive answered, then closed while idle
		closed.Add(1)
	})
	tr := newTestTransport(t)
	for i := 0; i < 20; i++ {
		_, body, err := do(tr, context.Background(), "GET", "http://"+addr+"/", "")
		if err != nil || body != "ok" {
			t.Fatalf("GET %d: %q %v", i, body, err)
		}
		want := int64(i + 1)
		eventually(t, 5*time.Second, "server closed", func() bool { return closed.Load() == want })
	}
}
