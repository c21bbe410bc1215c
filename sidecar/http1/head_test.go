package http1

import (
	"bufio"
	"io"
	"strings"
	"testing"
)

var testLimits = Limits{MaxHeaderBytes: 60 << 10, MaxHeaders: 100}

func parseReq(t *testing.T, raw string) (*Head, error) {
	t.Helper()
	n := HeadEnd([]byte(raw), 0)
	if n == 0 {
		t.Fatalf("HeadEnd found no end in %q", raw)
	}
	var h Head
	return &h, ParseRequest([]byte(raw[:n]), &h, testLimits)
}

func TestParseRequestAccepts(t *testing.T) {
	h, err := parseReq(t, "POST /a?b=c HTTP/1.1\r\nHost: api\r\nContent-Length: 5, 5\r\nX-Thing:  v a l \t\r\nConnection: keep-alive, X-Hop\r\n\r\nhello")
	if err != nil {
		t.Fatal(err)
	}
	if string(h.Method) != "POST" || string(h.Target) != "/a?b=c" || h.Minor != 1 || string(h.Host) != "api" {
		t.Fatalf("request line: %q %q 1.%d host %q", h.Method, h.Target, h.Minor, h.Host)
	}
	if h.ContentLength != 5 || h.Chunked || h.Close {
		t.Fatalf("framing: cl=%d chunked=%v close=%v", h.ContentLength, h.Chunked, h.Close)
	}
	if got := string(h.Get("x-thing")); got != "v a l" {
		t.Fatalf("X-Thing = %q", got)
	}
	if !h.HopByHop([]byte("x-hop")) || !h.HopByHop([]byte("Keep-Alive")) || h.HopByHop([]byte("X-Thing")) {
		t.Fatal("hop-by-hop fields wrong")
	}
	h, err = parseReq(t, "GET / HTTP/1.0\nConnection: close\n\n")
	if err != nil || !h.Close || h.Minor != 0 {
		t.Fatalf("HTTP/1.0 with bare LF: %v close=%v", err, h.Close)
	}
	h, err = parseReq(t, "GET / HTTP/1.0\r\n\r\n")
	if err != nil || !h.Close {
		t.Fatalf("HTTP/1.0 without keep-alive must close: %v %v", err, h.Close)
	}
	h, err = parseReq(t, "PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
	if err != nil || !h.Chunked || h.ContentLength != -1 {
		t.Fatalf("chunked: %v %v %d", err, h.Chunked, h.ContentLength)
	}
}

// The hostile requests of the issue, and the rest of RFC 9112's MUSTs.
func TestParseRequestRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, raw string
		status    int
		reason    string
	}{
		{"CL and TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "both Content-Length and Transfer-Encoding"},
		{"TE and CL", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400, "both"},
		{"differing CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400, "differing Content-Length values 5 and 6"},
		{"differing CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400, "differing"},
		{"signed CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400, `invalid Content-Length "+5"`},
		{"huge CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400, "invalid Content-Length"},
		{"TE gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, `transfer coding "gzip" not implemented`},
		{"TE gzip chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, "gzip"},
		{"TE chunked twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "more than once"},
		{"TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501, "xchunked"},
		{"TE chunked then identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400, "after chunked"},
		{"TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "HTTP/1.0"},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n", 400, `obs-fold (a line starting with whitespace) after header "X-A"`},
		{"space before colon", "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400, `whitespace before the colon in header "Transfer-Encoding"`},
		{"bad name", "GET / HTTP/1.1\r\nHost: a\r\nX(A): 1\r\n\r\n", 400, `invalid header name "X(A)"`},
		{"NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400, `invalid byte 0x00 in the value of header "X-A"`},
		{"bare CR", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", 400, "bare CR"},
		{"no colon", "GET / HTTP/1.1\r\nHost: a\r\nX-A\r\n\r\n", 400, "without a colon"},
		{"no host", "GET / HTTP/1.1\r\n\r\n", 400, "missing Host"},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host"},
		{"bad host", "GET / HTTP/1.1\r\nHost: a<b\r\n\r\n", 400, "invalid Host"},
		{"HTTP/2.0 line", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "unsupported HTTP version"},
		{"bad version", "GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, "malformed HTTP version"},
		{"lowercase version", "GET / http/1.1\r\nHost: a\r\n\r\n", 400, "malformed HTTP version"},
		{"space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, ""},
		{"bad method", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid method"},
		{"empty method", " / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line"},
		{"bad connection token", "GET / HTTP/1.1\r\nHost: a\r\nConnection: a b\r\n\r\n", 400, "invalid Connection option"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseReq(t, tc.raw)
			e, ok := err.(*Error)
			if !ok {
				t.Fatalf("got %v, want a *Error %d", err, tc.status)
			}
			if e.Status != tc.status || !strings.Contains(e.Reason, tc.reason) {
				t.Fatalf("got %d %q, want %d containing %q", e.Status, e.Reason, tc.status, tc.reason)
			}
		})
	}
}

func TestParseRequestLimits(t *testing.T) {
	var b strings.Builder
	b.WriteString("GET / HTTP/1.1\r\nHost: a\r\n")
	for i := 0; i < 100; i++ {
		b.WriteString("X-N: 1\r\n")
	}
	b.WriteString("\r\n")
	_, err := parseReq(t, b.String())
	if e, ok := err.(*Error); !ok || e.Status != 431 || !strings.Contains(e.Reason, "more than 100 header fields") {
		t.Fatalf("101 fields: %v", err)
	}
	big := "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 60<<10) + "\r\n\r\n"
	_, err = parseReq(t, big)
	if e, ok := err.(*Error); !ok || e.Status != 431 || !strings.Contains(e.Reason, "larger than 61440 bytes") {
		t.Fatalf("60 KiB value: %v", err)
	}
	// 0 turns both off
	var h Head
	if err := ParseRequest([]byte(big), &h, Limits{}); err != nil {
		t.Fatalf("no limits: %v", err)
	}
}

func TestHeadEnd(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", 27},
		{"GET / HTTP/1.1\nHost: a\n\nbody", 24},
		{"GET / HTTP/1.1\r\nHost: a\r\n", 0},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r", 0},
		{"GET / HTTP/1.1\r\nHost: a\n\r\n", 26},
	} {
		if got := HeadEnd([]byte(tc.in), 0); got != tc.want {
			t.Errorf("HeadEnd(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
	// resuming where the last call stopped finds the same end
	in := []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	for from := 0; from <= len(in); from++ {
		if got := HeadEnd(in, from); got != len(in) && from <= len(in)-1 {
			t.Fatalf("HeadEnd from %d = %d", from, got)
		}
	}
}

func TestParseResponse(t *testing.T) {
	var h Head
	raw := "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
	if err := ParseResponse([]byte(raw), &h, testLimits); err != nil {
		t.Fatal(err)
	}
	if h.Status != 200 || string(h.Reason) != "OK" || h.ContentLength != 3 || !h.Close {
		t.Fatalf("%d %q cl=%d close=%v", h.Status, h.Reason, h.ContentLength, h.Close)
	}
	if err := ParseResponse([]byte("HTTP/1.1 204\r\n\r\n"), &h, testLimits); err != nil || h.Status != 204 {
		t.Fatalf("no reason phrase: %v", err)
	}
	for _, raw := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/1.1 20 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
		"HTTP/1.1 200 O\x01K\r\n\r\n",
		"ICY 200 OK\r\n\r\n",
	} {
		if err := ParseResponse([]byte(raw), &h, testLimits); err == nil {
			t.Errorf("accepted %q", raw)
		}
	}
}

func TestChunkedReader(t *testing.T) {
	read := func(body string) (string, *ChunkedReader, error) {
		c := NewChunkedReader(bufio.NewReaderSize(strings.NewReader(body), 64), testLimits)
		b, err := io.ReadAll(c)
		return string(b), c, err
	}
	got, c, err := read("5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: abc\r\n\r\n")
	if err != nil || got != "hello world" {
		t.Fatalf("got %q %v", got, err)
	}
	if len(c.Trailers) != 1 || string(c.Trailers[0].Name) != "X-Sum" || string(c.Trailers[0].Value) != "abc" {
		t.Fatalf("trailers %q", c.Trailers)
	}
	for _, tc := range []struct{ body, reason string }{
		{"5\r\nhelloXX\r\n0\r\n\r\n", "chunk data not followed by CRLF"},
		{"5\nhello\r\n0\r\n\r\n", "not ended by CRLF"},
		{"-5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"},
		{"0x5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"},
		{"1000000000000000\r\n", "invalid chunk size"},
		{"5;a\x00\r\nhello\r\n0\r\n\r\n", "chunk extension"},
		{"0\r\nX: a\r\n b\r\n\r\n", "obs-fold"},
		{"5;" + strings.Repeat("x", 100) + "\r\nhello\r\n0\r\n\r\n", "chunk-size line too long"},
	} {
		_, _, err := read(tc.body)
		if err == nil || !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("%q: got %v, want %q", tc.body, err, tc.reason)
		}
	}
	if _, _, err := read("5\r\nhel"); err != io.ErrUnexpectedEOF {
		t.Errorf("truncated body: %v", err)
	}
}
