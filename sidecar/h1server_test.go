package sidecar

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawExchange sends raw on a new connection to addr and returns the
// response, and whether the sidecar then closed the connection (EOF, not a
// reset and not still open after the response).
func rawExchange(t *testing.T, addr, raw string) (*http.Response, string, bool) {
	t.Helper()
	conn := dialRaw(t, addr)
	go func() { _, _ = io.WriteString(conn, raw) }()
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer to %.60q: %v", raw, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body of the answer to %.60q: %v", raw, err)
	}
	_, err = br.ReadByte()
	return resp, string(body), errors.Is(err, io.EOF)
}

// dialRaw opens a raw connection to addr, closed when the test ends, with
// a deadline so that a hang fails the test rather than the run.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	return conn
}

// The hostile requests of the HTTP/1.1 engine's issue, on an upstream
// listener: each is answered with the status that names the problem, the
// connection closes after the answer (the client reads it, no reset), the
// backend never sees the request, and the listener goes on serving.
func TestHostileRequestsAnswered(t *testing.T) {
	b := startBackend(t, "b1", nil)
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", b.addr, 1))
	addr := s.UpstreamAddr("api")
	many := strings.Repeat("X-Many: 1\r\n", 200)
	for _, tc := range []struct {
		name, raw string
		status    int
		reason    string
	}{
		{"CL and TE", "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "both Content-Length and Transfer-Encoding"},
		{"differing CL", "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, "differing Content-Length values 5 and 6"},
		{"TE gzip", "POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip\r\n\r\n", 501, `transfer coding "gzip" not implemented`},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: api\r\nX-A: 1\r\n 2\r\n\r\n", 400, `obs-fold (a line starting with whitespace) after header "X-A"`},
		{"space before colon", "GET / HTTP/1.1\r\nHost: api\r\nX-A : 1\r\n\r\n", 400, `whitespace before the colon in header "X-A"`},
		{"bad name", "GET / HTTP/1.1\r\nHost: api\r\nX\x01A: 1\r\n\r\n", 400, "invalid header name"},
		{"bad value", "GET / HTTP/1.1\r\nHost: api\r\nX-A: 1\x7f\r\n\r\n", 400, `invalid byte 0x7f in the value of header "X-A"`},
		{"100 KB header", "GET / HTTP/1.1\r\nHost: api\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n", 431, "request head larger than 61440 bytes"},
		{"200 headers", "GET / HTTP/1.1\r\nHost: api\r\n" + many + "\r\n", 431, "more than 100 header fields"},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", 400, "missing Host"},
		{"HTTP/2.0 request line", "GET / HTTP/2.0\r\nHost: api\r\n\r\n", 505, "unsupported HTTP version"},
		{"bad target", "GET /%zz HTTP/1.1\r\nHost: api\r\n\r\n", 400, `invalid request target "/%zz"`},
		{"unknown expectation", "POST / HTTP/1.1\r\nHost: api\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx", 417, "unsupported expectation"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hits := b.hits.Load()
			resp, body, closed := rawExchange(t, addr, tc.raw)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.reason) {
				t.Fatalf("got %d %q, want %d naming %q", resp.StatusCode, body, tc.status, tc.reason)
			}
			if resp.Header.Get("X-Sidemesh-Local-Reply") != "true" || !resp.Close {
				t.Fatalf("answer headers %v: want a local reply with Connection: close", resp.Header)
			}
			if !closed {
				t.Fatal("connection not closed after the answer")
			}
			if b.hits.Load() != hits {
				t.Fatal("the backend saw a refused request")
			}
		})
	}
	// The same listener still serves a well-formed request.
	resp, body := get(t, h1Client(), "http://"+addr+"/ok")
	if resp.StatusCode != 200 || body != "hello from b1" {
		t.Fatalf("after the hostile requests: %d %q", resp.StatusCode, body)
	}
}

// An unfinished request head is cut off after request_headers_timeout
// (slowloris); a finished one on the same listener is served.
func TestRequestHeadersTimeout(t *testing.T) {
	b := startBackend(t, "b1", nil)
	s, _ := startSidecar(t, oneUpstream+"limits: {request_headers_timeout: 100ms}\n", endpointsYAML("api", b.addr, 1))
	conn := dialRaw(t, s.UpstreamAddr("api"))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: api\r\nX-Slow: "); err != nil {
		t.Fatal(err)
	}
	// Only the headers timeout can close it: the idle timeout is an hour.
	n, err := conn.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("unfinished head: read %d, %v; want the connection closed", n, err)
	}
	if b.hits.Load() != 0 {
		t.Fatal("the backend saw the unfinished request")
	}
	resp, _ := get(t, h1Client(), "http://"+s.UpstreamAddr("api")+"/")
	if resp.StatusCode != 200 {
		t.Fatalf("a whole request: %d", resp.StatusCode)
	}
}

// The headers the sidecar sets reach the upstream even when the client
// names them in Connection (which strips the client's own copies).
func TestOwnHeadersSurviveConnection(t *testing.T) {
	b := startBackend(t, "b1", nil)
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", b.addr, 1))
	resp, _ := get(t, h1Client(), "http://"+s.UpstreamAddr("api")+"/",
		"Connection", "X-Forwarded-For, X-Request-Id, X-Sidemesh-Attempt-Count, X-Forwarded-Proto",
		"X-Request-Id", "from-client", "X-Forwarded-For", "198.18.0.9")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	r := b.lastRequest()
	if got := r.Header.Get("X-Forwarded-For"); got != "127.0.0.1" {
		t.Errorf("X-Forwarded-For = %q, want ours (127.0.0.1)", got)
	}
	if id := r.Header.Get("X-Request-Id"); len(id) != 36 {
		t.Errorf("X-Request-Id = %q, want one we made", id)
	}
	if r.Header.Get("X-Sidemesh-Attempt-Count") != "1" || r.Header.Get("X-Forwarded-Proto") != "http" {
		t.Errorf("attempt count %q, proto %q", r.Header.Get("X-Sidemesh-Attempt-Count"), r.Header.Get("X-Forwarded-Proto"))
	}
}

// max_requests_per_connection closes a connection after that many
// requests, with Connection: close on the last answer.
func TestMaxRequestsPerConnection(t *testing.T) {
	b := startBackend(t, "b1", nil)
	s, _ := startSidecar(t, oneUpstream+"limits: {max_requests_per_connection: 2}\n", endpointsYAML("api", b.addr, 1))
	conn := dialRaw(t, s.UpstreamAddr("api"))
	br := bufio.NewReader(conn)
	for i := 1; i <= 2; i++ {
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: api\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.Close != (i == 2) {
			t.Fatalf("answer %d: Connection: close = %v", i, resp.Close)
		}
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last request: %v, want EOF", err)
	}
}

// A malformed response from the upstream is a 502 (protocol error); the
// connection it came on is discarded, and the next request works.
func TestMalformedResponseIs502(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func(n int) {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if req.URL.Path == "/smuggle" {
						_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
						continue
					}
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			}(n)
		}
	}()
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", ln.Addr().String(), 1))
	resp, body := get(t, h1Client(), "http://"+s.UpstreamAddr("api")+"/smuggle")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "protocol error") {
		t.Fatalf("smuggling-shaped response: %d %q, want 502 protocol error", resp.StatusCode, body)
	}
	resp, body = get(t, h1Client(), "http://"+s.UpstreamAddr("api")+"/fine")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("next request: %d %q", resp.StatusCode, body)
	}
}

// A chunked request body is checked and relayed, its trailers with it.
func TestChunkedRequestRelayed(t *testing.T) {
	got := make(chan string, 1)
	b := startBackend(t, "b1", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- string(body) + "|" + r.Trailer.Get("X-Sum")
	})
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", b.addr, 1))
	resp, _, _ := rawExchange(t, s.UpstreamAddr("api"),
		"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if g := <-got; g != "hello world|11" {
		t.Fatalf("backend got %q", g)
	}
}

// A response of unknown length is relayed as it comes: the client reads
// the first piece before the backend writes the second (a proxy that
// buffered it would hang here until the test's deadline).
func TestStreamedResponseFlushed(t *testing.T) {
	next := make(chan struct{})
	b := startBackend(t, "b1", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: second\n\n")
	})
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", b.addr, 1))
	conn := dialRaw(t, s.UpstreamAddr("api"))
	_, _ = io.WriteString(conn, "GET /events HTTP/1.1\r\nHost: api\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event: %q %v", line, err)
	}
	close(next)
}

// HEAD: the answer keeps the upstream's Content-Length and has no body,
// so the next request on the connection reads its own answer.
func TestHeadThenGetOnOneConnection(t *testing.T) {
	b := startBackend(t, "b1", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		if r.Method != http.MethodHead {
			_, _ = io.WriteString(w, "hello")
		}
	})
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", b.addr, 1))
	conn := dialRaw(t, s.UpstreamAddr("api"))
	_, _ = io.WriteString(conn, "HEAD / HTTP/1.1\r\nHost: api\r\n\r\nGET / HTTP/1.1\r\nHost: api\r\n\r\n")
	br := bufio.NewReader(conn)
	head, err := http.ReadResponse(br, &http.Request{Method: http.MethodHead})
	if err != nil || head.ContentLength != 5 {
		t.Fatalf("HEAD: %v, Content-Length %d", err, head.ContentLength)
	}
	get, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET after HEAD: %v", err)
	}
	body, _ := io.ReadAll(get.Body)
	if string(body) != "hello" {
		t.Fatalf("GET body %q", body)
	}
}

// Shutdown waits for requests in flight until its context ends, then
// closes every connection, HTTP/2 ones included: a stuck stream cannot
// keep the engine (and the process) up.
func TestShutdownClosesStuckConnections(t *testing.T) {
	entered := make(chan struct{}, 2)
	release := make(chan struct{})
	defer close(release)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	var lim LimitsConfig
	lim.setDefaults()
	srv := newH1Server(h, lim, slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	url := "http://" + ln.Addr().String() + "/"
	errs := make(chan error, 2)
	for _, c := range []*http.Client{h1Client(), h2cClient()} {
		go func() {
			resp, err := c.Get(url)
			if err == nil {
				resp.Body.Close()
			}
			errs <- err
		}()
	}
	<-entered
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with two stuck requests: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := <-errs; err == nil {
			t.Fatal("a stuck request got an answer after its connection was closed")
		}
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
}

// A request body that stalls longer than stream_idle_timeout ends the
// request with 408 (nothing was answered yet) and the connection.
func TestStreamIdleTimeoutOnBody(t *testing.T) {
	b := startBackend(t, "b1", nil)
	s, _ := startSidecar(t, oneUpstream+"limits: {stream_idle_timeout: 100ms}\n", endpointsYAML("api", b.addr, 1))
	conn := dialRaw(t, s.UpstreamAddr("api"))
	if _, err := io.WriteString(conn, "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 10\r\n\r\nab"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout || string(body) != "stream timeout" {
		t.Fatalf("stalled body: %d %q, want 408 stream timeout", resp.StatusCode, body)
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the 408: %v, want the connection closed", err)
	}
}

// A chunked request body that breaks its framing midway is a 400 naming
// the problem; the endpoint is not blamed (no outlier result, no retry).
func TestBadChunkedBodyIs400(t *testing.T) {
	b := startBackend(t, "b1", nil)
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", b.addr, 1))
	resp, body, closed := rawExchange(t, s.UpstreamAddr("api"),
		"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `invalid chunk size "zz"`) {
		t.Fatalf("bad chunk: %d %q", resp.StatusCode, body)
	}
	if !closed {
		t.Fatal("connection not closed after a broken body")
	}
	if n := b.hits.Load(); n > 1 {
		t.Fatalf("the broken request was sent %d times: a client's fault is not retried", n)
	}
}
