package http1client

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/sidecar/http1"
)

// FuzzWriteRequest: a request net/http reads, written by writeRequest,
// reads back through net/http the same (method, target, Host, fields,
// body, trailers).
func FuzzWriteRequest(f *testing.F) {
	for _, s := range []string{
		"GET /a?b=c HTTP/1.1\r\nHost: api\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello",
		"PUT /p HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: api\r\n\r\n",
		"GET /%41%20b HTTP/1.1\r\nHost: api\r\nUser-Agent: x\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		in, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil || in.Method == http.MethodConnect {
			return
		}
		body, err := io.ReadAll(in.Body)
		if err != nil {
			return
		}
		in.Body = io.NopCloser(bytes.NewReader(body))
		if in.ContentLength == 0 && len(body) == 0 {
			in.Body = http.NoBody
		}
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		if err := writeRequest(bw, in); err != nil {
			t.Fatalf("writeRequest: %v", err)
		}
		_ = bw.Flush()
		out, err := http.ReadRequest(bufio.NewReader(&buf))
		if err != nil {
			t.Fatalf("net/http cannot read what we wrote (%v): %q", err, buf.String())
		}
		got, err := io.ReadAll(out.Body)
		if err != nil {
			t.Fatalf("body of what we wrote: %v: %q", err, buf.String())
		}
		if out.Method != in.Method || out.URL.RequestURI() != in.URL.RequestURI() || out.Host != in.Host {
			t.Fatalf("request line: %s %s %s, want %s %s %s", out.Method, out.URL.RequestURI(), out.Host, in.Method, in.URL.RequestURI(), in.Host)
		}
		if !bytes.Equal(got, body) {
			t.Fatalf("body %q, want %q", got, body)
		}
		for k, vv := range in.Header {
			if k == "Content-Length" || k == "Trailer" {
				continue
			}
			if k == "User-Agent" && len(vv) == 1 && vv[0] == "" {
				continue
			}
			want := make([]string, len(vv))
			for i, v := range vv {
				want[i] = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
			}
			if !slices.Equal(out.Header[k], want) {
				t.Fatalf("field %s: %q, want %q", k, out.Header[k], want)
			}
		}
		for k, vv := range in.Trailer {
			if !slices.Equal(out.Trailer[k], vv) {
				t.Fatalf("trailer %s: %q, want %q", k, out.Trailer[k], vv)
			}
		}
	})
}

// FuzzReadResponse: a response head package http1 accepts is read by
// response() as net/http reads it (status, fields, body, trailers).
func FuzzReadResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 3\r\n\r\n",
		"HTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, raw []byte, head bool) {
		n := http1.HeadEnd(raw, 0)
		if n == 0 {
			return
		}
		pc := &pconn{}
		lim := http1.Limits{MaxHeaderBytes: maxResponseHead, MaxHeaders: maxResponseFields}
		br := bufio.NewReaderSize(bytes.NewReader(raw), max(n, 16))
		b, _ := br.Peek(n)
		if http1.ParseResponse(b, &pc.head, lim) != nil {
			return
		}
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		req := &http.Request{Method: method}
		ours := response(pc, br, b, req)
		_, _ = br.Discard(n)
		ourBody, ourErr := io.ReadAll(ours.Body)
		theirs, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), req)
		if err != nil {
			return // net/http is stricter here (the parser fuzz documents where)
		}
		theirBody, theirErr := io.ReadAll(theirs.Body)
		if ours.StatusCode != theirs.StatusCode {
			t.Fatalf("status %d, net/http %d", ours.StatusCode, theirs.StatusCode)
		}
		if ourErr == nil && theirErr == nil && !bytes.Equal(ourBody, theirBody) {
			t.Fatalf("body %q, net/http %q", ourBody, theirBody)
		}
		if ourErr == nil && theirErr != nil {
			t.Fatalf("we read a body %q net/http refuses: %v", ourBody, theirErr)
		}
		for k, vv := range theirs.Header {
			if k == "Content-Length" && (ours.StatusCode < 200 || ours.StatusCode == 204) {
				continue // net/http drops it where no body can be
			}
			if !slices.Equal(ours.Header[k], vv) {
				t.Fatalf("field %s: %q, net/http %q", k, ours.Header[k], vv)
			}
		}
		if ourErr == nil && theirErr == nil {
			for k, vv := range theirs.Trailer {
				if !slices.Equal(ours.Trailer[k], vv) {
					t.Fatalf("trailer %s: %q, net/http %q", k, ours.Trailer[k], vv)
				}
			}
		}
	})
}
