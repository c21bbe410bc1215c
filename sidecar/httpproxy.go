package sidecar

import (
	"context"
	"encoding/hex"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/http1client"
	"github.com/sidemesh/sidemesh/tracing"
	"github.com/sidemesh/sidemesh/upstream"
)

// bufPool is the body-copy buffer pool: 32 KiB buffers in a bounded
// free list (a channel, so Put does not allocate as sync.Pool would for a
// slice header).
type bufPool struct{ free chan []byte }

func (b *bufPool) Get() []byte {
	select {
	case buf := <-b.free:
		return buf
	default:
		return make([]byte, 32<<10)
	}
}

func (b *bufPool) Put(buf []byte) {
	select {
	case b.free <- buf[:cap(buf)]:
	default: // full: let the GC have it
	}
}

var proxyBuffers = &bufPool{free: make(chan []byte, 1024)}

// clusterTransport is the RoundTripper the balancer plugs into: it runs
// each request's attempts (attempt.go) over pooled upstream connections.
type clusterTransport struct {
	c       *Cluster
	h1      idleRoundTripper // HTTP/1.1 upstream: the lean client (std transport for upgrades)
	h2      *http.Transport  // h2c upstream
	forceH2 bool             // grpc: h2c end to end
	retry   retryPolicy
	inbound bool // the local app: no client spans, the server span is propagated
}

func newClusterTransport(c *Cluster) *clusterTransport {
	u := c.upstream()
	t := &clusterTransport{
		c:       c,
		forceH2: u.Protocol == "grpc",
		retry:   newRetryPolicy(*u.RetryPolicy),
		inbound: c.inbound,
	}
	std := c.newTransport(false)
	if useStdH1 {
		t.h1 = std
	} else {
		t.h1 = http1client.New(c.dialContext, u.MaxIdleConnsPerHost, u.IdleTimeout, std)
	}
	t.h2 = c.newTransport(true)
	c.mu.Lock()
	c.onRemoved = append(c.onRemoved, func() {
		t.h1.CloseIdleConnections()
		t.h2.CloseIdleConnections()
	})
	c.mu.Unlock()
	return t
}

// idleRoundTripper is a RoundTripper with a pool to empty.
type idleRoundTripper interface {
	http.RoundTripper
	CloseIdleConnections()
}

// useStdH1 selects net/http's Transport for HTTP/1.1 upstreams instead of
// the lean client (set by SIDEMESH_STD_H1=1, for comparison and as a fallback).
var useStdH1 = os.Getenv("SIDEMESH_STD_H1") == "1"

// newTransport builds a pooled, tuned net/http transport over the
// cluster's dialer (dial.go).
func (c *Cluster) newTransport(h2c bool) *http.Transport {
	u := c.cfg
	dial := c.dialContext
	if h2c {
		dial = c.dialContextH2
	}
	t := &http.Transport{
		Proxy:                 nil,
		DialContext:           dial,
		MaxIdleConns:          0,
		MaxIdleConnsPerHost:   u.MaxIdleConnsPerHost,
		IdleConnTimeout:       u.IdleTimeout,
		DisableCompression:    true,
		ExpectContinueTimeout: 0,
		WriteBufferSize:       16 << 10,
		ReadBufferSize:        16 << 10,
	}
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		t.Protocols = &p
		t.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: 1000, PingTimeout: 15 * time.Second, SendPingTimeout: 30 * time.Second}
	}
	return t
}

// hashKey is the context key of a request's *balancer.PickInfo.
type hashKey struct{}

// doneBody ends the attempt (the pick's Done), the request's accounting
// and the attempt's span when the proxy closes the body, after trailers
// have arrived.
type doneBody struct {
	io.ReadCloser
	c       *Cluster
	a       *try
	done    DoneInfo
	resp    *http.Response
	grpc    bool
	outcome tracing.Outcome
	once    atomic.Bool
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	if b.once.CompareAndSwap(false, true) {
		a := b.a
		if a.cancel != nil {
			a.cancel()
		}
		a.p.Done(b.done)
		b.c.cm.rqActive.Dec()
		if a.span != nil {
			if b.grpc {
				tracing.EndGRPC(a.span, b.resp.StatusCode, tracing.GRPCStatus(b.resp.Header, b.resp.Trailer), b.outcome)
			} else {
				tracing.EndHTTP(a.span, b.resp.StatusCode, b.outcome)
			}
		}
	}
	return err
}

// upgradeBody is the body of a 101 response: doneBody's accounting, and the
// Write half ReverseProxy relays the upgraded connection through.
type upgradeBody struct {
	*doneBody
	w io.Writer
}

func (b *upgradeBody) Write(p []byte) (int, error) { return b.w.Write(p) }

// upgradeMatches is ReverseProxy's check: the response switches to the
// protocol the request asked for.
func upgradeMatches(req, resp http.Header) bool {
	up := upgradeType(resp)
	if up == "" {
		return false
	}
	for i := 0; i < len(up); i++ {
		if up[i] < ' ' || up[i] > '~' {
			return false
		}
	}
	return strings.EqualFold(upgradeType(req), up)
}

func upgradeType(h http.Header) string {
	for _, v := range h["Connection"] {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return h.Get("Upgrade")
			}
		}
	}
	return ""
}

// upstreamHandler is the HTTP proxy of one cluster: the handler behind
// its listener (and the transparent listener's requests for it). It sets
// the route timeout, extracts the trace context and the hash key, and
// forwards the request over the cluster transport (forward.go).
type upstreamHandler struct {
	c       *Cluster
	t       *clusterTransport
	timeout time.Duration
	hashes  []upstream.HashPolicy
	log     *slog.Logger
}

func newUpstreamHandler(c *Cluster) *upstreamHandler {
	u := c.upstream()
	return &upstreamHandler{c: c, t: newClusterTransport(c), timeout: *u.Timeout, hashes: u.HashPolicy, log: c.log}
}

// newRequestID returns a random UUIDv4 string.
func newRequestID() string {
	var b [16]byte
	a, c := rand.Uint64(), rand.Uint64()
	for i := 0; i < 8; i++ {
		b[i] = byte(a >> (8 * i))
		b[8+i] = byte(c >> (8 * i))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return string(out[:])
}

func (h *upstreamHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if h.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.timeout)
		defer cancel()
	}
	if !h.c.inbound {
		ctx = h.c.tp.Extract(ctx, r.Header) // the app's span is the parent of ours
	}
	if len(h.hashes) > 0 && h.c.usesHash() { // the effective policy: CDS may set it
		if info, ok := h.hash(r); ok {
			ctx = context.WithValue(ctx, hashKey{}, info)
		}
	}
	h.forward(w, r, ctx)
}

// hash computes the request hash from the first hash policy that applies.
func (h *upstreamHandler) hash(r *http.Request) (*balancer.PickInfo, bool) {
	for _, hp := range h.hashes {
		if hp.Header != "" {
			if v := r.Header.Get(hp.Header); v != "" {
				return &balancer.PickInfo{Hash: xxhash.Sum64String(v), HasHash: true}, true
			}
			continue
		}
		if hp.SourceIP {
			host, _, err := net.SplitHostPort(r.RemoteAddr)
			if err == nil {
				return &balancer.PickInfo{Hash: xxhash.Sum64String(host), HasHash: true}, true
			}
		}
	}
	return nil, false
}

func hashString(s string) uint64 { return xxhash.Sum64String(s) }
