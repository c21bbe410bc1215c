package http1

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"

	"golang.org/x/net/http/httpguts"
)

// Limits bound a message head; 0 turns a bound off.
type Limits struct {
	// MaxHeaderBytes bounds the head: start line, fields and line ends
	// (Envoy's max_request_headers_kb counts the same bytes).
	MaxHeaderBytes int
	// MaxHeaders bounds the number of header fields.
	MaxHeaders int
}

// Field is one header field: slices of the buffer the head was parsed
// from, the value without its surrounding whitespace.
type Field struct {
	Name, Value []byte
}

// Head is a parsed request or response head. Its slices point into the
// buffer given to ParseRequest or ParseResponse and are valid while that
// buffer is.
type Head struct {
	Method, Target []byte // request line
	Status         int    // status line
	Reason         []byte
	Minor          int // HTTP/1.Minor

	Fields []Field

	// ContentLength is the body's length from Content-Length, -1 when the
	// head has none.
	ContentLength int64
	// Chunked: Transfer-Encoding: chunked frames the body.
	Chunked bool
	// Close: the sender ends the connection after this message
	// (Connection: close, or HTTP/1.0 without keep-alive).
	Close bool
	// Upgrade: Connection lists "upgrade".
	Upgrade bool
	// Expect is the Expect header's value (requests), nil without one.
	Expect []byte
	// Host is the Host header's value (requests).
	Host []byte

	connTokens [][]byte // other Connection tokens: names of hop-by-hop fields
}

// Reset empties h, keeping its slices' capacity.
func (h *Head) Reset() {
	fields, conn := h.Fields[:0], h.connTokens[:0]
	*h = Head{Fields: fields, connTokens: conn, ContentLength: -1}
}

// Get returns the value of the first field named name (any case), nil if
// there is none.
func (h *Head) Get(name string) []byte {
	for i := range h.Fields {
		if equalFold(h.Fields[i].Name, name) {
			return h.Fields[i].Value
		}
	}
	return nil
}

// HopByHop reports whether the field named name belongs to this
// connection only: the standard hop-by-hop fields (RFC 9110 §7.6.1) and
// those the Connection header names.
func (h *Head) HopByHop(name []byte) bool {
	if len(name) >= 2 && len(name) <= 19 {
		for _, s := range hopHeaders {
			if equalFold(name, s) {
				return true
			}
		}
	}
	for _, t := range h.connTokens {
		if bytes.EqualFold(t, name) {
			return true
		}
	}
	return false
}

// hopHeaders are removed when a message is forwarded (RFC 9110 §7.6.1;
// Proxy-Connection and Keep-Alive as net/http and Envoy remove them too).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// Error is a message the proxy refuses: Status is what to answer (400,
// 431, 501, 505 for requests; a proxy answers 502 for a bad response) and
// Reason names what is wrong.
type Error struct {
	Status int
	Reason string
}

func (e *Error) Error() string { return "http1: " + e.Reason }

func errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Reason: fmt.Sprintf(format, args...)}
}

// HeadEnd returns the length of the head at the start of buf, through the
// empty line that ends it, or 0 when buf does not hold all of it yet.
// Lines end in CRLF or, as RFC 9112 §2.2 allows, a bare LF. from is where
// a previous call stopped looking (0 the first time).
func HeadEnd(buf []byte, from int) int {
	i := max(from-3, 0)
	for {
		j := bytes.IndexByte(buf[i:], '\n')
		if j < 0 {
			return 0
		}
		i += j + 1
		// an empty line: "\n" right after the previous line's "\n"
		if i < len(buf) && buf[i] == '\n' {
			return i + 1
		}
		if i+1 < len(buf) && buf[i] == '\r' && buf[i+1] == '\n' {
			return i + 2
		}
	}
}

// ParseRequest parses the request head buf (as HeadEnd delimited it) into
// h. The request-target is checked for bytes, not resolved.
func ParseRequest(buf []byte, h *Head, lim Limits) error {
	line, rest, err := h.start(buf, lim, "request")
	if err != nil {
		return err
	}
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return errorf(400, "malformed request line %q", clip(line))
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 <= 0 {
		return errorf(400, "malformed request line %q", clip(line))
	}
	sp2 += sp1 + 1
	h.Method, h.Target = line[:sp1], line[sp1+1:sp2]
	if !isToken(h.Method) {
		return errorf(400, "invalid method %q", clip(h.Method))
	}
	for _, c := range h.Target {
		if c <= ' ' || c >= 0x7f {
			return errorf(400, "invalid byte %#02x in request target", c)
		}
	}
	minor, err := parseVersion(line[sp2+1:])
	if err != nil {
		return err
	}
	h.Minor = minor
	if err := h.parseFields(rest, lim, true); err != nil {
		return err
	}
	return nil
}

// ParseResponse parses the response head buf into h. A proxy answers 502
// for any error (Status says what a server would have answered).
func ParseResponse(buf []byte, h *Head, lim Limits) error {
	line, rest, err := h.start(buf, lim, "response")
	if err != nil {
		return err
	}
	if len(line) < 12 || line[8] != ' ' {
		return errorf(400, "malformed status line %q", clip(line))
	}
	minor, err := parseVersion(line[:8])
	if err != nil {
		return err
	}
	h.Minor = minor
	code := line[9:12]
	if code[0] < '1' || code[0] > '9' || !isDigit(code[1]) || !isDigit(code[2]) {
		return errorf(400, "malformed status code %q", clip(code))
	}
	h.Status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	if len(line) > 12 {
		if line[12] != ' ' {
			return errorf(400, "malformed status line %q", clip(line))
		}
		h.Reason = line[13:]
		for _, c := range h.Reason {
			if !fieldValueByte(c) {
				return errorf(400, "invalid byte %#02x in reason phrase", c)
			}
		}
	}
	return h.parseFields(rest, lim, false)
}

// start resets h, checks the head's size and splits off its first line.
func (h *Head) start(buf []byte, lim Limits, what string) (line, rest []byte, err error) {
	h.Reset()
	if lim.MaxHeaderBytes > 0 && len(buf) > lim.MaxHeaderBytes {
		return nil, nil, errorf(http.StatusRequestHeaderFieldsTooLarge, "%s head larger than %d bytes", what, lim.MaxHeaderBytes)
	}
	return nextLine(buf)
}

// Strings gives the fields of a head as strings without a copy each: all
// of them are substrings of one copy of the head's bytes.
type Strings struct {
	raw []byte
	all string
}

// NewStrings copies raw (the buffer a head was parsed from) once.
func NewStrings(raw []byte) Strings { return Strings{raw: raw, all: string(raw)} }

// Of returns b (a slice of the head) as a string: a substring of the copy
// when b lies in raw (checked by address), a copy of its own otherwise.
func (s Strings) Of(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if o := cap(s.raw) - cap(b); o >= 0 && o+len(b) <= len(s.raw) && &s.raw[o] == &b[0] {
		return s.all[o : o+len(b)]
	}
	return string(b)
}

// AppendValue appends a field value with CR and LF made spaces, so that a
// value can never split a head.
func AppendValue(b []byte, v string) []byte {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return b
}

// parseFields parses the header section and applies the framing rules.
func (h *Head) parseFields(rest []byte, lim Limits, request bool) error {
	hosts := 0
	var te int // Transfer-Encoding codings seen
	for {
		line, r, err := nextLine(rest)
		if err != nil {
			return err
		}
		rest = r
		if len(line) == 0 {
			break
		}
		name, value, err := h.field(line, lim)
		if err != nil {
			return err
		}
		h.Fields = append(h.Fields, Field{Name: name, Value: value})
		switch {
		case equalFold(name, "Content-Length"):
			if err := h.contentLength(value); err != nil {
				return err
			}
		case equalFold(name, "Transfer-Encoding"):
			if err := h.transferEncoding(value, &te); err != nil {
				return err
			}
		case equalFold(name, "Connection"):
			if err := h.connection(value); err != nil {
				return err
			}
		case equalFold(name, "Host"):
			hosts++
			h.Host = value
		case equalFold(name, "Expect"):
			h.Expect = value
		}
	}
	if h.Chunked && h.ContentLength >= 0 {
		return errorf(400, "both Content-Length and Transfer-Encoding")
	}
	if h.Chunked && h.Minor == 0 {
		// RFC 9112 §6.1: the framing of such a message is faulty.
		return errorf(400, "Transfer-Encoding in an HTTP/1.0 message")
	}
	if h.Minor == 0 {
		h.Close = !h.keepAlive()
	}
	if request && h.Minor == 1 {
		if hosts == 0 {
			return errorf(400, "missing Host header")
		}
		if hosts > 1 {
			return errorf(400, "more than one Host header")
		}
	}
	if request && !httpguts.ValidHostHeader(string(h.Host)) {
		return errorf(400, "invalid Host %q", clip(h.Host))
	}
	return nil
}

// parseTrailers parses a trailer section (fields and the empty line):
// the field rules without the framing ones, which do not apply there.
func (h *Head) parseTrailers(rest []byte, lim Limits) error {
	for {
		line, r, err := nextLine(rest)
		if err != nil {
			return err
		}
		rest = r
		if len(line) == 0 {
			return nil
		}
		name, value, err := h.field(line, lim)
		if err != nil {
			return err
		}
		h.Fields = append(h.Fields, Field{Name: name, Value: value})
	}
}

// field splits and checks one field line.
func (h *Head) field(line []byte, lim Limits) (name, value []byte, err error) {
	if line[0] == ' ' || line[0] == '\t' {
		prev := "the start line"
		if n := len(h.Fields); n > 0 {
			prev = fmt.Sprintf("header %q", h.Fields[n-1].Name)
		}
		return nil, nil, errorf(400, "obs-fold (a line starting with whitespace) after %s", prev)
	}
	colon := bytes.IndexByte(line, ':')
	if colon < 0 {
		return nil, nil, errorf(400, "header line without a colon %q", clip(line))
	}
	name = line[:colon]
	if !isToken(name) {
		if n := len(name); n > 0 && (name[n-1] == ' ' || name[n-1] == '\t') {
			return nil, nil, errorf(400, "whitespace before the colon in header %q", clip(bytes.TrimRight(name, " \t")))
		}
		return nil, nil, errorf(400, "invalid header name %q", clip(name))
	}
	value = trimOWS(line[colon+1:])
	for _, c := range value {
		if !fieldValueByte(c) {
			return nil, nil, errorf(400, "invalid byte %#02x in the value of header %q", c, name)
		}
	}
	if lim.MaxHeaders > 0 && len(h.Fields) == lim.MaxHeaders {
		return nil, nil, errorf(http.StatusRequestHeaderFieldsTooLarge, "more than %d header fields", lim.MaxHeaders)
	}
	return name, value, nil
}

// contentLength applies one Content-Length field: a list of identical
// values is one value (RFC 9110 §8.6); differing values are refused.
func (h *Head) contentLength(v []byte) error {
	for {
		elem := v
		i := bytes.IndexByte(v, ',')
		if i >= 0 {
			elem, v = v[:i], v[i+1:]
		}
		elem = trimOWS(elem)
		n, ok := parseDecimal(elem)
		if !ok {
			return errorf(400, "invalid Content-Length %q", clip(elem))
		}
		if h.ContentLength >= 0 && h.ContentLength != n {
			return errorf(400, "differing Content-Length values %d and %d", h.ContentLength, n)
		}
		h.ContentLength = n
		if i < 0 {
			return nil
		}
	}
}

// transferEncoding applies one Transfer-Encoding field: chunked, once
// and last, is the only coding a proxy relays (Envoy answers 501 to
// others).
func (h *Head) transferEncoding(v []byte, seen *int) error {
	for {
		var tok []byte
		i := bytes.IndexByte(v, ',')
		if i >= 0 {
			tok, v = trimOWS(v[:i]), v[i+1:]
		} else {
			tok = trimOWS(v)
		}
		switch {
		case len(tok) == 0:
			return errorf(400, "empty element in Transfer-Encoding")
		case equalFold(tok, "chunked"):
			if h.Chunked {
				return errorf(400, "chunked applied more than once")
			}
			h.Chunked = true
			*seen++
		default:
			if !isToken(tok) {
				return errorf(400, "invalid Transfer-Encoding %q", clip(tok))
			}
			if h.Chunked {
				return errorf(400, "transfer coding %q after chunked", clip(tok))
			}
			return errorf(501, "transfer coding %q not implemented", clip(tok))
		}
		if i < 0 {
			return nil
		}
	}
}

// connection applies one Connection field.
func (h *Head) connection(v []byte) error {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = trimOWS(v[:i]), v[i+1:]
		} else {
			tok, v = trimOWS(v), nil
		}
		switch {
		case len(tok) == 0:
		case !isToken(tok):
			return errorf(400, "invalid Connection option %q", clip(tok))
		case equalFold(tok, "close"):
			h.Close = true
		case equalFold(tok, "upgrade"):
			h.Upgrade = true
		default:
			h.connTokens = append(h.connTokens, tok)
		}
	}
	return nil
}

func (h *Head) keepAlive() bool {
	if h.Close {
		return false
	}
	for _, t := range h.connTokens {
		if equalFold(t, "keep-alive") {
			return true
		}
	}
	return false
}

// nextLine splits off the first line (without its CRLF or LF); a CR not
// followed by LF is refused (RFC 9112 §2.2).
func nextLine(b []byte) (line, rest []byte, err error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, nil, errorf(400, "unterminated line %q", clip(b))
	}
	line, rest = b[:i], b[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, nil, errorf(400, "bare CR in line %q", clip(line))
	}
	return line, rest, nil
}

// parseVersion accepts HTTP/1.0 and HTTP/1.1; another well-formed
// version is 505.
func parseVersion(v []byte) (int, error) {
	if len(v) != 8 || string(v[:5]) != "HTTP/" || !isDigit(v[5]) || v[6] != '.' || !isDigit(v[7]) {
		return 0, errorf(400, "malformed HTTP version %q", clip(v))
	}
	if v[5] != '1' || v[7] > '1' {
		return 0, errorf(http.StatusHTTPVersionNotSupported, "unsupported HTTP version %q", v)
	}
	return int(v[7] - '0'), nil
}

// parseDecimal parses 1*DIGIT without overflow.
func parseDecimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// tchar (RFC 9110 §5.6.2).
var tokenTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenTable[c] {
			return false
		}
	}
	return true
}

// fieldValueByte: VCHAR, obs-text, SP, HTAB (RFC 9110 §5.5).
func fieldValueByte(c byte) bool { return c >= 0x20 && c != 0x7f || c == '\t' }

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold compares ASCII case-insensitively without allocating.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if x == y {
			continue
		}
		if x|0x20 != y|0x20 || x|0x20 < 'a' || x|0x20 > 'z' {
			return false
		}
	}
	return true
}

// clip shortens what an error quotes.
func clip(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}

// AppendInt appends n in decimal (for heads the engine writes).
func AppendInt(dst []byte, n int64) []byte { return strconv.AppendInt(dst, n, 10) }
