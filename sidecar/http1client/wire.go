package http1client

import (
	"bufio"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/sidemesh/sidemesh/sidecar/http1"
)

// writeRequest writes req's head and body to bw: the request line, Host,
// the header fields as they are (no sorting, nothing added: an empty
// User-Agent is left out, as net/http does), the framing (Content-Length,
// or chunked when the length is unknown), then the body and trailers.
func writeRequest(bw *bufio.Writer, req *http.Request) error {
	b := bw.AvailableBuffer()
	b = append(b, req.Method...)
	b = append(b, ' ')
	if req.URL.Opaque == "" && req.URL.RawPath == "" && req.URL.RawQuery == "" && !req.URL.ForceQuery && req.URL.Path != "" && noEscape(req.URL.Path) {
		b = append(b, req.URL.Path...)
	} else {
		b = append(b, req.URL.RequestURI()...)
	}
	b = append(b, " HTTP/1.1\r\nHost: "...)
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	b = append(b, host...)
	b = append(b, "\r\n"...)
	hasBody := req.Body != nil && req.Body != http.NoBody
	for k, vv := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		case "User-Agent":
			if len(vv) == 1 && vv[0] == "" {
				continue
			}
		}
		for _, v := range vv {
			b = append(b, k...)
			b = append(b, ": "...)
			b = http1.AppendValue(b, v)
			b = append(b, "\r\n"...)
		}
	}
	chunked := false
	switch {
	case hasBody && req.ContentLength > 0:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, req.ContentLength, 10)
		b = append(b, "\r\n"...)
	case hasBody:
		chunked = true
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
		if len(req.Trailer) > 0 {
			b = append(b, "Trailer: "...)
			first := true
			for k := range req.Trailer {
				if !first {
					b = append(b, ", "...)
				}
				first = false
				b = append(b, k...)
			}
			b = append(b, "\r\n"...)
		}
	case req.Method == http.MethodPost || req.Method == http.MethodPut || req.Method == http.MethodPatch:
		b = append(b, "Content-Length: 0\r\n"...)
	}
	b = append(b, "\r\n"...)
	if _, err := bw.Write(b); err != nil {
		return err
	}
	if !hasBody {
		return nil
	}
	if !chunked {
		n, err := io.Copy(bw, io.LimitReader(req.Body, req.ContentLength))
		if err != nil {
			return err
		}
		if n != req.ContentLength {
			return io.ErrUnexpectedEOF
		}
		return nil
	}
	cw := chunkWriter{bw}
	if _, err := io.Copy(cw, req.Body); err != nil {
		return err
	}
	b = bw.AvailableBuffer()
	b = append(b, "0\r\n"...)
	for k, vv := range req.Trailer {
		for _, v := range vv {
			b = append(b, k...)
			b = append(b, ": "...)
			b = http1.AppendValue(b, v)
			b = append(b, "\r\n"...)
		}
	}
	b = append(b, "\r\n"...)
	_, err := bw.Write(b)
	return err
}

type chunkWriter struct{ bw *bufio.Writer }

func (w chunkWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b := w.bw.AvailableBuffer()
	b = strconv.AppendInt(b, int64(len(p)), 16)
	b = append(b, "\r\n"...)
	if _, err := w.bw.Write(b); err != nil {
		return 0, err
	}
	n, err := w.bw.Write(p)
	if err != nil {
		return n, err
	}
	_, err = w.bw.WriteString("\r\n")
	return n, err
}

func noEscape(p string) bool {
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c <= ' ' || c >= 0x7f || c == '%' || c == '?' || c == '#' {
			return false
		}
	}
	return true
}

// response builds the *http.Response of the head checked in pc.head
// (raw: its bytes, still in br) and its body reader. Every string is a
// substring of one copy of the head.
func response(pc *pconn, br *bufio.Reader, raw []byte, req *http.Request) *http.Response {
	h := &pc.head
	sub := http1.NewStrings(raw).Of
	hdr := make(http.Header, len(h.Fields))
	vals := make([]string, 0, len(h.Fields)) // one backing array for the values
	var trailer http.Header
	for _, f := range h.Fields {
		k := textproto.CanonicalMIMEHeaderKey(sub(f.Name))
		if k == "Transfer-Encoding" {
			continue
		}
		v := sub(f.Value)
		if k == "Trailer" && h.Chunked {
			for _, t := range strings.Split(v, ",") {
				if t = textproto.TrimString(t); t != "" {
					if trailer == nil {
						trailer = http.Header{}
					}
					trailer[textproto.CanonicalMIMEHeaderKey(t)] = nil
				}
			}
		}
		if vv, ok := hdr[k]; ok {
			hdr[k] = append(vv, v)
			continue
		}
		vals = append(vals, v)
		n := len(vals)
		hdr[k] = vals[n-1 : n : n]
	}
	resp := &http.Response{
		Status:     statusString(h.Status),
		StatusCode: h.Status,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: h.Minor,
		Header:     hdr,
		Trailer:    trailer,
		Close:      h.Close,
		Request:    req,
	}
	if h.Minor == 0 {
		resp.Proto = "HTTP/1.0"
	}
	bodyless := h.Status == http.StatusNoContent || h.Status == http.StatusNotModified ||
		h.Status < 200 || req.Method == http.MethodHead
	switch {
	case bodyless:
		resp.Body = http.NoBody
		if h.ContentLength >= 0 && req.Method == http.MethodHead {
			resp.ContentLength = h.ContentLength
		}
	case h.Chunked:
		resp.ContentLength = -1
		resp.TransferEncoding = []string{"chunked"}
		resp.Body = &chunkedBody{r: http1.NewChunkedReader(br, http1.Limits{MaxHeaderBytes: maxResponseHead, MaxHeaders: maxResponseFields}), resp: resp}
	case h.ContentLength >= 0:
		resp.ContentLength = h.ContentLength
		if h.ContentLength == 0 {
			resp.Body = http.NoBody
		} else {
			resp.Body = &lengthBody{r: br, left: h.ContentLength}
		}
	default: // close-delimited
		resp.ContentLength = -1
		resp.Close = true
		resp.Body = io.NopCloser(br)
	}
	return resp
}

// lengthBody is a body of known length.
type lengthBody struct {
	r    *bufio.Reader
	left int64
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	if b.left == 0 {
		return n, io.EOF
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *lengthBody) Close() error { return nil }

// chunkedBody is a chunked body (checked by package http1); its
// trailers go into the response's Trailer at the end.
type chunkedBody struct {
	r    *http1.ChunkedReader
	resp *http.Response
}

func (b *chunkedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF && len(b.r.Trailers) > 0 {
		if b.resp.Trailer == nil {
			b.resp.Trailer = http.Header{}
		}
		for _, f := range b.r.Trailers {
			k := textproto.CanonicalMIMEHeaderKey(string(f.Name))
			b.resp.Trailer[k] = append(b.resp.Trailer[k], string(f.Value))
		}
	}
	return n, err
}

func (b *chunkedBody) Close() error { return nil }

var statusStrings = func() map[int]string {
	m := map[int]string{}
	for _, c := range []int{100, 101, 103, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308,
		400, 401, 403, 404, 405, 408, 409, 412, 413, 415, 429, 431, 500, 501, 502, 503, 504} {
		m[c] = strconv.Itoa(c) + " " + http.StatusText(c)
	}
	return m
}()

func statusString(code int) string {
	if s, ok := statusStrings[code]; ok {
		return s
	}
	return strconv.Itoa(code) + " " + http.StatusText(code)
}
