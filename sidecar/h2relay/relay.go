package h2relay

import (
	"context"
	"errors"
	"net"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Config is a relay's protocol settings; zero fields take the defaults.
type Config struct {
	// MaxConcurrentStreams is SETTINGS_MAX_CONCURRENT_STREAMS advertised to
	// a downstream client (default 100); streams past it are refused.
	MaxConcurrentStreams uint32
	// MaxHeaderListSize bounds a header block (HEADERS and its CONTINUATION
	// frames, decoded) in bytes as RFC 9113 counts them (default 60 KiB);
	// past it the downstream connection is closed with GOAWAY.
	MaxHeaderListSize uint32
	// StreamWindow is the flow-control window of one stream on either leg
	// (SETTINGS_INITIAL_WINDOW_SIZE; default 1 MiB, what Envoy's default
	// per_connection_buffer_limit_bytes lets one stream hold): at most this
	// much of a stream's data is in the relay per direction. A quarter of
	// it is given back at a time, so one fast stream costs its sender a
	// WINDOW_UPDATE (a wakeup) per 256 KiB, not per 64 KiB as with 256 KiB.
	StreamWindow uint32
	// ConnWindow is the connection-level receive window (default 4 MiB).
	ConnWindow uint32
	// MaxRapidResets is how many streams a client may reset before their
	// response, net of the streams it let complete, before the connection
	// is closed with GOAWAY ENHANCE_YOUR_CALM (default 2×MaxConcurrentStreams).
	MaxRapidResets int
	// MaxControlFrames bounds the control frames (SETTINGS and PING
	// acknowledgements, RST_STREAM) queued for a peer that does not read
	// them; past it the connection is closed (default 1000).
	MaxControlFrames int
	// MaxStreamsPerConnection drains a downstream connection (GOAWAY) once
	// it has opened that many streams (0: no limit).
	MaxStreamsPerConnection int
	// StreamIdleTimeout ends a stream that relays nothing either way for
	// this long (0: off), as the deadline does: the handler's reply when no
	// response started, else RST_STREAM CANCEL.
	StreamIdleTimeout time.Duration
	// MaxQueuedFrames bounds the DATA frames waiting to be written to one
	// peer (for its window or its socket) before the connection is closed
	// as not reading (default 10000, Envoy's max_outbound_frames).
	MaxQueuedFrames int
	// IdleTimeout closes an upstream connection without streams this long
	// (default 1 h).
	IdleTimeout time.Duration
	// Log receives connection-level protocol errors; nil discards them.
	Log func(msg string, args ...any)
}

func (c *Config) setDefaults() {
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = 100
	}
	if c.MaxHeaderListSize == 0 {
		c.MaxHeaderListSize = 60 << 10
	}
	if c.StreamWindow == 0 {
		c.StreamWindow = 1 << 20
	}
	if c.StreamWindow > maxWindow {
		c.StreamWindow = maxWindow
	}
	if c.ConnWindow == 0 {
		c.ConnWindow = 4 << 20
	}
	if c.ConnWindow < initialWindow {
		c.ConnWindow = initialWindow
	}
	if c.MaxRapidResets == 0 {
		c.MaxRapidResets = 2 * int(c.MaxConcurrentStreams)
	}
	if c.MaxQueuedFrames == 0 {
		c.MaxQueuedFrames = 10000
	}
	if c.MaxControlFrames == 0 {
		c.MaxControlFrames = 1000
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = time.Hour
	}
	if c.Log == nil {
		c.Log = func(string, ...any) {}
	}
}

const (
	initialWindow = 65535
	maxWindow     = 1<<31 - 1
	frameSize     = 16384 // the SETTINGS_MAX_FRAME_SIZE we advertise: one pooled buffer
)

// Handler makes the relay's decisions for the streams of one downstream
// connection.
type Handler interface {
	// Open is called once for each new downstream stream, before its first
	// attempt, on the connection's read loop: it must not block. It
	// returns the stream's policy, or a Reply to answer the stream locally;
	// with a Reply, a non-nil Stream is only closed (its Close called once
	// the answer is queued), never asked for an attempt.
	Open(req *Request) (Stream, *Reply)
}

// Stream is the embedder's side of one relayed stream. The relay calls it
// from several goroutines but never concurrently for one stream, except
// that Deadline is read once after Open.
type Stream interface {
	// Deadline is when the whole stream times out (zero: never). A stream
	// without a response by then is answered with TimeoutReply; one whose
	// response started is reset with CANCEL.
	Deadline() time.Time
	// Attempt chooses the endpoint of attempt n (from 0) and edits h, the
	// request header it sends (a copy of the downstream one, pseudo fields
	// included). Attempt 0 runs on the connection's read loop and must not
	// block; a retry's (n > 0) runs on a goroutine of its own and may (its
	// backoff). It returns a Reply instead to answer locally (no endpoint,
	// overload).
	Attempt(n int, h *Header) (Target, *Reply)
	// Retry is asked when attempt n ended before any response was relayed:
	// with a response header (r.Status > 0) or a failure. replayable says
	// whether the request sent so far can be sent again. True retries.
	Retry(n int, r *Result, replayable bool) bool
	// End reports attempt n's outcome, exactly once per attempt Attempt
	// returned a Target for (r.Status 0 and r.Err set: no response). r is
	// valid only during the call.
	End(n int, r *Result)
	// Reply is the local answer for a stream whose last attempt failed
	// without a response, or that timed out before one. Nil resets the
	// stream instead: REFUSED_STREAM when r.Unprocessed, the upstream's
	// RST_STREAM code when it reset the stream, else INTERNAL_ERROR.
	Reply(r *Result) *Reply
	// Close is called once when the stream is over (after the last End).
	Close()
}

// Target is where an attempt goes.
type Target struct {
	// Addr is the endpoint ("host:port"); connections are pooled by it.
	Addr string
	// Dial connects to Addr (nil: a plain TCP dial).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Timeout bounds the attempt until its response header (0: none);
	// when it expires the attempt fails with Result.Timeout.
	Timeout time.Duration
	// Pool is the pool the attempt's connection comes from (nil: the
	// Server's): a connection whose streams go to several upstreams keeps
	// each upstream's connections (and their dial settings) apart.
	Pool *Pool
}

// Request is a downstream stream's request header.
type Request struct {
	Header     Header // pseudo fields first, as received
	RemoteAddr net.Addr
	// Context is the downstream connection's: canceled when it closes.
	Context context.Context
	// GoAway starts draining the downstream connection: GOAWAY, and it
	// ends once its streams have (this one included).
	GoAway func()
}

// Result is what an attempt came to.
type Result struct {
	// Status is the response :status (0: none yet).
	Status int
	// Header and Trailer are the response's fields (nil when none).
	Header, Trailer []hpack.HeaderField
	// Err is why the attempt got no complete response (nil: complete).
	Err error
	// Reset is the RST_STREAM or GOAWAY code the upstream sent, when it did.
	Reset http2.ErrCode
	// Unprocessed: the upstream refused the stream or went away before
	// processing it (REFUSED_STREAM, above a GOAWAY's last stream): safe to
	// retry elsewhere.
	Unprocessed bool
	// Connect: no connection to the endpoint could be made.
	Connect bool
	// Timeout: the attempt's or the stream's timeout expired.
	Timeout bool
	// Canceled: the downstream reset the stream or went away.
	Canceled bool
	// Retried: this attempt was ended for a retry.
	Retried bool
}

// GRPCStatus is the grpc-status of the response: from the trailers, else
// from a trailers-only header; -1 when there is none.
func (r *Result) GRPCStatus() int {
	if v, ok := lookup(r.Trailer, "grpc-status"); ok {
		return atoiStatus(v)
	}
	if v, ok := lookup(r.Header, "grpc-status"); ok {
		return atoiStatus(v)
	}
	return -1
}

func atoiStatus(v string) int {
	if v == "" || len(v) > 2 {
		return -1
	}
	n := 0
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return -1
		}
		n = n*10 + int(v[i]-'0')
	}
	return n
}

// Errors in Result.Err.
var (
	ErrStreamReset   = errors.New("h2relay: upstream reset the stream")
	ErrConnClosed    = errors.New("h2relay: upstream connection closed")
	ErrGoAway        = errors.New("h2relay: upstream went away before processing the stream")
	ErrTimeout       = errors.New("h2relay: upstream timeout")
	ErrIdleTimeout   = errors.New("h2relay: stream idle timeout")
	ErrCanceled      = errors.New("h2relay: downstream canceled the stream")
	ErrReplayTooLong = errors.New("h2relay: request too long to replay")
)

// Reply is a response the relay sends itself.
type Reply struct {
	Status int
	Header []hpack.HeaderField // regular fields, lower-case names
	Body   []byte              // nil: the header ends the stream
}

// Header is a list of header fields with lower-case names, pseudo fields
// first.
type Header []hpack.HeaderField

// Get returns the first value of name.
func (h Header) Get(name string) string {
	v, _ := lookup(h, name)
	return v
}

// Has reports whether name is present.
func (h Header) Has(name string) bool {
	_, ok := lookup(h, name)
	return ok
}

// Set replaces name's values with value (appending it when absent; a
// pseudo field is inserted after the other pseudo fields).
func (h *Header) Set(name, value string) {
	s := *h
	for i := range s {
		if s[i].Name == name {
			s[i].Value = value
			out := s[:i+1]
			for _, f := range s[i+1:] {
				if f.Name != name {
					out = append(out, f)
				}
			}
			*h = out
			return
		}
	}
	if strings.HasPrefix(name, ":") {
		i := 0
		for i < len(s) && strings.HasPrefix(s[i].Name, ":") {
			i++
		}
		s = append(s, hpack.HeaderField{})
		copy(s[i+1:], s[i:])
		s[i] = hpack.HeaderField{Name: name, Value: value}
		*h = s
		return
	}
	*h = append(s, hpack.HeaderField{Name: name, Value: value})
}

// Del removes name.
func (h *Header) Del(name string) {
	out := (*h)[:0]
	for _, f := range *h {
		if f.Name != name {
			out = append(out, f)
		}
	}
	*h = out
}

func lookup(fs []hpack.HeaderField, name string) (string, bool) {
	for _, f := range fs {
		if f.Name == name {
			return f.Value, true
		}
	}
	return "", false
}

// connectionSpecific reports a field RFC 9113 §8.2.2 forbids in HTTP/2.
func connectionSpecific(name string) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		return true
	}
	return false
}
