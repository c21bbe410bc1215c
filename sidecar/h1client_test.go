package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A pooled connection the server closed while idle is not used (or, for an
// idempotent request that meets it closing, retried on a fresh one): the
// client never sees it. The POSTs wait for the close: a POST that races it
// is not retried (TestLeanH1NonIdempotentNotReplayed), as in net/http.
func TestLeanH1StaleConnectionRetried(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns, closed atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				// Answer one request with a keep-alive response, then close
				// without saying so: the sidecar's pooled conn goes stale.
				defer closed.Add(1)
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}()
		}
	}()
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", ln.Addr().String(), 1))
	c := h1Client()
	for i := 0; i < 20; i++ {
		resp, body := get(t, c, "http://"+s.UpstreamAddr("api")+"/")
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		eventually(t, 5*time.Second, "upstream closed its connections", func() bool { return closed.Load() == conns.Load() })
		// POST with a small body is replayable (buffered) too.
		r, err := c.Post("http://"+s.UpstreamAddr("api")+"/", "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("post %d: %d %q", i, r.StatusCode, b)
		}
	}
	if conns.Load() < 20 {
		t.Fatalf("only %d upstream connections: the stale path was not exercised", conns.Load())
	}
}

// Chunked bodies both ways, trailers, interim 103, HEAD, 204, 304 and a
// 1 MiB body, through the lean client.
func TestLeanH1Semantics(t *testing.T) {
	big := make([]byte, 1<<20)
	_, _ = rand.Read(big)
	be := startBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			data, _ := io.ReadAll(r.Body) // HTTP/1.x handlers read the body before answering
			w.Header().Set("Trailer", "X-Sum")
			_, _ = w.Write(data)
			w.Header().Set("X-Sum", fmt.Sprint(len(data)))
		case "/early":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			fmt.Fprint(w, "final")
		case "/nocontent":
			w.WriteHeader(204)
		case "/notmodified":
			w.WriteHeader(304)
		case "/big":
			_, _ = w.Write(big)
		case "/close":
			w.Header().Set("Connection", "close")
			fmt.Fprint(w, "bye")
		default:
			w.Header().Set("Content-Length", "5")
			if r.Method != "HEAD" {
				fmt.Fprint(w, "hello")
			}
		}
	})
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", be.addr, 1))
	base := "http://" + s.UpstreamAddr("api")
	c := h1Client()

	// Chunked request body (unknown length), echoed with a trailer.
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < 10; i++ {
			_, _ = pw.Write(bytes.Repeat([]byte("x"), 1000))
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", base+"/echo", pr)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(body) != 10000 || resp.Trailer.Get("X-Sum") != "10000" {
		t.Fatalf("chunked echo: %d bytes, trailer %q", len(body), resp.Trailer.Get("X-Sum"))
	}
	if resp, body := get(t, c, base+"/early"); resp.StatusCode != 200 || body != "final" {
		t.Fatalf("103 then 200: %d %q", resp.StatusCode, body)
	}
	for path, code := range map[string]int{"/nocontent": 204, "/notmodified": 304} {
		if resp, _ := get(t, c, base+path); resp.StatusCode != code {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
	hreq, _ := http.NewRequest("HEAD", base+"/", nil)
	hresp, err := c.Do(hreq)
	if err != nil || hresp.StatusCode != 200 || hresp.ContentLength != 5 {
		t.Fatalf("HEAD: %v %+v", err, hresp)
	}
	hresp.Body.Close()
	if resp, body := get(t, c, base+"/big"); resp.StatusCode != 200 || body != string(big) {
		t.Fatalf("big body: %d, %d bytes", resp.StatusCode, len(body))
	}
	for i := 0; i < 3; i++ {
		if resp, body := get(t, c, base+"/close"); resp.StatusCode != 200 || body != "bye" {
			t.Fatalf("Connection: close: %d %q", resp.StatusCode, body)
		}
	}
	// Everything above left nothing in flight.
	eventually(t, 5*time.Second, "no active requests", func() bool {
		return endpointHealth(t, s, be.addr).RqActive == 0
	})
}

// A client that leaves mid-body frees the connection and the accounting.
func TestLeanH1ClientLeavesMidBody(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	be := startBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, strings.Repeat("x", 1000))
		w.(http.Flusher).Flush()
		select {
		case <-block:
		case <-r.Context().Done():
		}
	})
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", be.addr, 1))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+s.UpstreamAddr("api")+"/", nil)
	resp, err := h1Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	eventually(t, 5*time.Second, "request accounting released", func() bool {
		e := endpointHealth(t, s, be.addr)
		return e.RqActive == 0 && e.CxActive == 0
	})
}

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

func newTestLeanH1(t *testing.T) *leanH1 {
	fb := &http.Transport{}
	tr := newLeanH1((&net.Dialer{}).DialContext, 8, time.Hour, fb)
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func leanDo(tr *leanH1, ctx context.Context, method, url, body string, hdr ...string) (*http.Response, string, error) {
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
func TestLeanH1StaleRetryTakesFreshConn(t *testing.T) {
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
	tr := newTestLeanH1(t)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			_, _, err := leanDo(tr, context.Background(), "GET", "http://"+addr+"/", "")
			errs <- err
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	resp, body, err := leanDo(tr, context.Background(), "GET", "http://"+addr+"/", "")
	if err != nil || resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("GET after the server dropped its pooled connections: %v %q", err, body)
	}
}

// A non-idempotent request the server received on a reused connection and
// then dropped (a handler that did its work and panicked) is not sent
// again: the server may have processed it. Idempotent requests, and those
// marked with Idempotency-Key, are retried (net/http's rules).
func TestLeanH1NonIdempotentNotReplayed(t *testing.T) {
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
		tr := newTestLeanH1(t)
		if _, _, err := leanDo(tr, context.Background(), "GET", "http://"+addr+"/", ""); err != nil {
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
		_, _, err := leanDo(tr, context.Background(), tc.method, "http://"+addr+"/", body, hdr...)
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
func TestLeanH1UnsolicitedBytesNotReused(t *testing.T) {
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
		tr := newTestLeanH1(t)
		if _, _, err := leanDo(tr, context.Background(), first.method, "http://"+addr+"/", ""); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			_, body, err := leanDo(tr, context.Background(), "GET", "http://"+addr+"/", "")
			if err != nil || body != "real" {
				t.Fatalf("after %q: GET %d got %q, %v", first.resp[:20], i, body, err)
			}
		}
	}
}

// A POST after the server closed its pooled connection while idle goes on
// a fresh connection (the idle check), though a POST is never retried.
func TestLeanH1IdleClosedConnNotUsed(t *testing.T) {
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
	tr := newTestLeanH1(t)
	for i := 0; i < 20; i++ {
		_, body, err := leanDo(tr, context.Background(), "POST", "http://"+addr+"/", "data")
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
func TestLeanH1IdleTimeoutClosesConn(t *testing.T) {
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
	tr := newLeanH1((&net.Dialer{}).DialContext, 8, 50*time.Millisecond, &http.Transport{})
	defer tr.CloseIdleConnections()
	for i := 0; i < 2; i++ { // the second reuses the conn: its timer is reset
		if _, _, err := leanDo(tr, context.Background(), "GET", "http://"+addr+"/", ""); err != nil {
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
	if _, body, err := leanDo(tr, context.Background(), "GET", "http://"+addr+"/", ""); err != nil || body != "ok" {
		t.Fatalf("after expiry: %q %v", body, err)
	}
}

// A response head that never ends is bounded (net/http: 10 MB by default).
func TestLeanH1HugeResponseHeader(t *testing.T) {
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
	tr := newTestLeanH1(t)
	tr.maxHeaderBytes = 256 << 10
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := leanDo(tr, ctx, "GET", "http://"+addr+"/", "")
	if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("endless header: %v (ctx %v)", err, ctx.Err())
	}
}

// Interim responses reach ReverseProxy's Got1xxResponse hook, which relays
// them (103 Early Hints) to the client, as net/http's Transport does.
func TestLeanH1EarlyHintsRelayed(t *testing.T) {
	be := startBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		fmt.Fprint(w, "final")
	})
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", be.addr, 1))
	var hints []string
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			hints = append(hints, fmt.Sprint(code, " ", h.Get("Link")))
			return nil
		},
	})
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+s.UpstreamAddr("api")+"/", nil)
	resp, err := h1Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "final" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if len(hints) != 1 || hints[0] != "103 </a.css>; rel=preload" {
		t.Fatalf("client saw interim responses %q", hints)
	}
}
