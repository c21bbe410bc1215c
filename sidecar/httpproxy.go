package sidecar

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"go.opentelemetry.io/otel/trace"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
	"github.com/sidemesh/sidemesh/tracing"
	"github.com/sidemesh/sidemesh/upstream"
)

// retry_on conditions as bits.
// Retry conditions (the one table is upstream's).
const (
	ro5xx                   = uint32(upstream.RetryOn5xx)
	roGatewayError          = uint32(upstream.RetryOnGatewayError)
	roReset                 = uint32(upstream.RetryOnReset)
	roConnectFailure        = uint32(upstream.RetryOnConnectFailure)
	roRetriable4xx          = uint32(upstream.RetryOnRetriable4xx)
	roRefusedStream         = uint32(upstream.RetryOnRefusedStream)
	roRetriableStatus       = uint32(upstream.RetryOnRetriableStatusCodes)
	roGrpcCancelled         = uint32(upstream.RetryOnCancelled)
	roGrpcDeadline          = uint32(upstream.RetryOnDeadlineExceeded)
	roGrpcUnavailable       = uint32(upstream.RetryOnUnavailable)
	roGrpcResourceExhausted = uint32(upstream.RetryOnResourceExhausted)
	roGrpcInternal          = uint32(upstream.RetryOnInternal)
)

func parseRetryOn(s string) uint32 { return uint32(upstream.RetryConditions(s)) }

// bufPool is the ReverseProxy buffer pool: 32 KiB buffers in a bounded
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

// clusterTransport is the RoundTripper the balancer plugs into: it picks an
// endpoint per attempt, applies breakers, retries and per-try timeouts, and
// feeds outcomes to outlier detection and metrics.
type clusterTransport struct {
	c             *Cluster
	h1            idleRoundTripper // HTTP/1.1 upstream: the lean client (std transport for upgrades)
	h2            *http.Transport  // h2c upstream
	forceH2       bool             // grpc: h2c end to end
	retryOn       uint32
	numRetries    int
	perTry        time.Duration
	backoffBase   time.Duration
	backoffMax    time.Duration
	maxBuffer     int64
	retriableCode map[int]bool
	inbound       bool // the local app: no client spans, the server span is propagated
}

func newClusterTransport(c *Cluster) *clusterTransport {
	u := c.cfg
	rp := u.RetryPolicy
	t := &clusterTransport{
		c:             c,
		forceH2:       u.Protocol == "grpc",
		retryOn:       parseRetryOn(rp.RetryOn),
		numRetries:    *rp.NumRetries,
		perTry:        rp.PerTryTimeout,
		backoffBase:   rp.RetryBackOff.BaseInterval,
		backoffMax:    rp.RetryBackOff.MaxInterval,
		maxBuffer:     rp.MaxBufferBytes,
		retriableCode: map[int]bool{},
		inbound:       c.inbound,
	}
	for _, code := range rp.RetriableStatusCodes {
		t.retriableCode[code] = true
	}
	std := c.newTransport(false)
	if useStdH1 {
		t.h1 = std
	} else {
		d := &net.Dialer{Timeout: u.ConnectTimeout, KeepAlive: 30 * time.Second}
		t.h1 = newLeanH1(c.dialer(d), u.MaxIdleConnsPerHost, u.IdleTimeout, std)
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

// newTransport builds a pooled, tuned transport whose dials count
// connections and honour max_connections (a dial waits for a free slot as a
// pending request, bounded by max_pending_requests).
func (c *Cluster) newTransport(h2c bool) *http.Transport {
	u := c.cfg
	d := &net.Dialer{Timeout: u.ConnectTimeout, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:                 nil,
		DialContext:           c.dialer(d),
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

// dialer wraps a net.Dialer with connection accounting and max_connections.
func (c *Cluster) dialer(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		br := c.breaker()
		if err := br.TryAcquireConn(); err != nil {
			// max_connections reached: wait for a slot as a pending
			// request, bounded by max_pending_requests.
			if err := br.AcquirePending(); err != nil {
				c.noteOverflow(err)
				return nil, err
			}
			// net/http dials on a context detached from the request's
			// cancellation, so a wait on ctx alone outlives the request that
			// caused it and holds its pending slot until some connection
			// closes. No request waits longer than the route timeout.
			wctx := ctx
			if to := *c.cfg.Timeout; to > 0 {
				var cancel context.CancelFunc
				wctx, cancel = context.WithTimeout(ctx, to)
				defer cancel()
			}
			err := br.AcquireConn(wctx)
			br.ReleasePending()
			if err != nil {
				if ctx.Err() == nil {
					// Gave up waiting for a slot: an overflow, not the
					// endpoint's fault (no outlier result).
					st := br.Stats().Connections
					err = breaker.Overflow{Threshold: st.Threshold, Limit: st.Limit}
				}
				return nil, err
			}
		}
		h := c.host(addr)
		dd := *d
		dd.Timeout = c.connectTimeout()
		conn, err := dd.DialContext(ctx, network, addr)
		if err != nil {
			br.ReleaseConn()
			return nil, err
		}
		if h != nil {
			h.CxActive.Add(1)
			if od := h.outlier(); od != nil {
				od.Record(outlier.ConnectSuccess)
			}
		}
		c.cm.cxActive.Inc()
		return &countedConn{Conn: conn, c: c, br: br, h: h}, nil
	}
}

// noteOverflow counts a breaker refusal (the per-threshold counters live in
// the breaker; this is the request-level log line).
func (c *Cluster) noteOverflow(err error) {
	c.log.Debug("circuit breaker overflow", "err", err)
}

type countedConn struct {
	net.Conn
	c      *Cluster
	br     *breaker.Breaker
	h      *Host
	closed atomic.Bool
}

func (cc *countedConn) Close() error {
	if cc.closed.CompareAndSwap(false, true) {
		cc.br.ReleaseConn()
		if cc.h != nil {
			cc.h.CxActive.Add(-1)
		}
		cc.c.cm.cxActive.Dec()
	}
	return cc.Conn.Close()
}

// CloseWrite lets TCP half-close pass through the wrapper.
func (cc *countedConn) CloseWrite() error {
	if cw, ok := cc.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// attemptBody lets an unbuffered body be retried only while nobody read it.
type attemptBody struct {
	src  io.ReadCloser
	read atomic.Bool
}

func (b *attemptBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.src.Read(p)
}

// Close is ignored: the transport closes request bodies on errors, and we
// may still want to retry; the server closes the real body.
func (b *attemptBody) Close() error { return nil }

type hashKey struct{}

// RoundTrip runs the attempts of one request: pick, breaker, per-try
// timeout, trace span, outlier feedback, retry decision.
func (t *clusterTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c := t.c
	br := c.breaker() // one breaker for the whole request, even if CDS swaps it
	ctx := req.Context()
	up := tracing.Upstream{Service: c.Name, LBPolicy: c.policyName()}
	if err := br.AcquireRequest(); err != nil {
		c.noteOverflow(err)
		if !t.inbound {
			_, span := c.tp.StartClient(ctx, req, up, 0)
			tracing.EndHTTP(span, 0, tracing.OutcomeOverloaded)
		}
		return nil, &upstreamError{kind: failOverflow, err: err}
	}
	info, _ := ctx.Value(hashKey{}).(*balancer.PickInfo)
	if info == nil {
		info = &balancer.PickInfo{}
	}

	// Bodies: buffer small ones for replay, guard the rest.
	var buffered []byte
	var guard *attemptBody
	hasBody := req.Body != nil && req.Body != http.NoBody
	if hasBody && t.numRetries > 0 {
		if req.ContentLength > 0 && req.ContentLength <= t.maxBuffer {
			buf := make([]byte, req.ContentLength)
			if _, err := io.ReadFull(req.Body, buf); err != nil {
				br.ReleaseRequest()
				return nil, &upstreamError{kind: failCanceled, err: err}
			}
			buffered = buf
		} else {
			guard = &attemptBody{src: req.Body}
			req.Body = guard
		}
	}
	c.cm.rqActive.Inc()

	var prev *Host
	var lastErr error
	isGRPC := t.forceH2 || strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc")
	retried := false
	retryHeld := false // a retry slot taken before the previous answer was discarded
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if !retryHeld {
				if err := br.AcquireRetry(); err != nil {
					c.noteOverflow(err)
					break // the previous failure stands, as in Envoy
				}
			}
			retryHeld = false
			retried = true
			c.cm.retries.Inc()
			if !sleepBackoff(ctx, attempt, t.backoffBase, t.backoffMax) {
				br.ReleaseRetry()
				lastErr = &upstreamError{kind: classify(ctx.Err(), ctx), err: ctx.Err()}
				break
			}
		}
		h, panicMode, err := c.pick(info, prev)
		if err != nil {
			if attempt > 0 {
				br.ReleaseRetry()
			}
			c.cm.noHealthy.Inc()
			if !t.inbound {
				_, span := c.tp.StartClient(ctx, req, up, attempt)
				tracing.EndHTTP(span, 0, tracing.OutcomeNoHealthyUpstream)
			}
			lastErr = &upstreamError{kind: failNoHealthy, err: err}
			break
		}
		prev = h
		od := h.outlier()
		req.URL.Host = h.Addr
		if buffered != nil {
			req.Body = io.NopCloser(bytes.NewReader(buffered))
			req.ContentLength = int64(len(buffered))
			req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buffered)), nil }
		}
		req.Header["X-Sidemesh-Attempt-Count"] = attemptHeader(attempt + 1)
		actx, cancel := ctx, context.CancelFunc(nil)
		if t.perTry > 0 {
			actx, cancel = context.WithTimeout(ctx, t.perTry)
		}
		var span trace.Span
		if t.inbound {
			c.tp.Inject(actx, req.Header) // the server span is the parent the app sees
		} else {
			actx, span = c.tp.StartClient(actx, req, up, attempt)
			tracing.SetEndpoint(span, h.Addr)
			c.tp.Inject(actx, req.Header)
		}
		areq := req
		if actx != ctx {
			areq = req.WithContext(actx)
		}
		tr := t.h1
		if t.forceH2 || req.ProtoMajor == 2 {
			tr = t.h2
		}
		h.Active.Add(1)
		h.RqTotal.Add(1)
		start := time.Now()
		resp, err := tr.RoundTrip(areq)
		if err != nil {
			h.Active.Add(-1)
			if cancel != nil {
				cancel()
			}
			if attempt > 0 {
				br.ReleaseRetry()
			}
			kind := classify(err, actx)
			if kind == failTimeout && ctx.Err() == nil {
				kind = failTimeout // per-try timeout: retriable
			}
			lastErr = &upstreamError{kind: kind, host: h.Addr, err: err}
			if kind != failCanceled && kind != failOverflow {
				h.RqError.Add(1)
				h.m.class[0].Inc()
				if od != nil {
					od.Record(outcomeResult(kind))
				}
			}
			canReplay := buffered != nil || !hasBody || (guard != nil && !guard.read.Load())
			retry := kind != failCanceled && kind != failOverflow && ctx.Err() == nil &&
				attempt < t.numRetries && canReplay && t.retriableFailure(kind)
			if span != nil {
				o := failOutcome(kind)
				if retry {
					o = tracing.OutcomeRetried
				}
				tracing.EndHTTP(span, 0, o)
			}
			if retry {
				continue
			}
			break
		}
		c.cm.rqDuration.Observe(time.Since(start).Seconds())
		h.m.class[statusClass(resp.StatusCode)].Inc()
		if resp.StatusCode >= 500 {
			h.RqError.Add(1)
		}
		if od != nil {
			if isGRPC {
				od.Record(grpcResult(resp))
			} else {
				od.Record(outlier.Status(resp.StatusCode))
			}
		}
		canReplay := buffered != nil || !hasBody
		holdsRetry := attempt > 0 // this attempt's retry slot
		if attempt < t.numRetries && canReplay && t.retriableResponse(resp, isGRPC) {
			if holdsRetry {
				br.ReleaseRetry()
				holdsRetry = false
			}
			// Take the next attempt's retry slot before discarding this
			// answer: without one, the answer stands (Envoy), rather than a
			// local 503.
			if err := br.AcquireRetry(); err != nil {
				c.noteOverflow(err)
			} else {
				retryHeld = true
				drainClose(resp.Body)
				h.Active.Add(-1)
				if cancel != nil {
					cancel()
				}
				if span != nil {
					tracing.EndHTTP(span, resp.StatusCode, tracing.OutcomeRetried)
				}
				lastErr = &upstreamError{kind: failReset, host: h.Addr, err: errRetriedStatus}
				continue
			}
		}
		o := tracing.OutcomeOK
		if panicMode && od != nil && od.Ejected() {
			o = tracing.OutcomeEjectedEndpoint
		} else if retried {
			o = tracing.OutcomeRetried
		}
		db := &doneBody{ReadCloser: resp.Body, c: c, br: br, h: h, cancel: cancel,
			retry: holdsRetry, span: span, resp: resp, grpc: isGRPC, outcome: o}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			// ReverseProxy relays an upgraded connection through the body,
			// which must stay writable; it answers a mismatched upgrade
			// without closing the body, so refuse that here.
			rwc, ok := resp.Body.(io.ReadWriteCloser)
			if !ok || !upgradeMatches(req.Header, resp.Header) {
				_ = db.Close()
				return nil, &upstreamError{kind: failReset, host: h.Addr, err: errBadUpgrade}
			}
			resp.Body = &upgradeBody{doneBody: db, w: rwc}
			return resp, nil
		}
		resp.Body = db
		return resp, nil
	}
	c.cm.rqActive.Dec()
	br.ReleaseRequest()
	if lastErr == nil {
		lastErr = &upstreamError{kind: failReset, err: io.ErrUnexpectedEOF}
	}
	return nil, lastErr
}

var (
	errRetriedStatus = errors.New("retriable status and no retry left")
	errBadUpgrade    = errors.New("upstream switched protocols without the requested upgrade")
)

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

func failOutcome(k failKind) tracing.Outcome {
	switch k {
	case failConnect:
		return tracing.OutcomeConnectFailure
	case failTimeout:
		return tracing.OutcomeTimeout
	case failOverflow:
		return tracing.OutcomeOverloaded
	case failNoHealthy:
		return tracing.OutcomeNoHealthyUpstream
	}
	return tracing.OutcomeReset
}

// outcomeResult maps a failure to what outlier detection counts.
func outcomeResult(k failKind) outlier.Result {
	switch k {
	case failConnect:
		return outlier.ConnectFailed
	case failTimeout:
		return outlier.Timeout
	}
	return outlier.Reset
}

// grpcResult: a trailers-only gRPC answer carries its status in the
// headers; otherwise the HTTP status stands (Envoy does the same).
func grpcResult(resp *http.Response) outlier.Result {
	if v := resp.Header.Get("Grpc-Status"); v != "" && resp.StatusCode == 200 {
		if n, err := strconv.ParseUint(v, 10, 32); err == nil {
			return outlier.GRPCStatus(uint32(n))
		}
	}
	return outlier.Status(resp.StatusCode)
}

// attemptValues are shared, read-only header values for the usual attempt
// counts (num_retries is at most 10), so setting the header allocates nothing.
var attemptValues = func() (v [12][]string) {
	for i := range v {
		v[i] = []string{strconv.Itoa(i)}
	}
	return v
}()

func attemptHeader(n int) []string {
	if n < len(attemptValues) {
		return attemptValues[n]
	}
	return []string{strconv.Itoa(n)}
}

func (t *clusterTransport) retriableFailure(k failKind) bool {
	switch k {
	case failConnect:
		return t.retryOn&(roConnectFailure|ro5xx|roGatewayError) != 0
	case failRefusedStream:
		return t.retryOn&(roRefusedStream|ro5xx) != 0
	case failReset:
		return t.retryOn&(roReset|ro5xx|roGatewayError) != 0
	case failTimeout:
		return t.retryOn&(ro5xx|roGatewayError) != 0
	}
	return false
}

func (t *clusterTransport) retriableResponse(resp *http.Response, isGRPC bool) bool {
	code := resp.StatusCode
	switch {
	case code >= 500 && t.retryOn&ro5xx != 0:
		return true
	case (code == 502 || code == 503 || code == 504) && t.retryOn&roGatewayError != 0:
		return true
	case code == 409 && t.retryOn&roRetriable4xx != 0:
		return true
	case t.retryOn&roRetriableStatus != 0 && t.retriableCode[code]:
		return true
	}
	if isGRPC && t.retryOn&(roGrpcCancelled|roGrpcDeadline|roGrpcUnavailable|roGrpcResourceExhausted|roGrpcInternal) != 0 {
		// Only a trailers-only response carries grpc-status in the headers.
		switch resp.Header.Get("Grpc-Status") {
		case "1":
			return t.retryOn&roGrpcCancelled != 0
		case "4":
			return t.retryOn&roGrpcDeadline != 0
		case "8":
			return t.retryOn&roGrpcResourceExhausted != 0
		case "13":
			return t.retryOn&roGrpcInternal != 0
		case "14":
			return t.retryOn&roGrpcUnavailable != 0
		}
	}
	return false
}

func drainClose(b io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, b, 64<<10)
	_ = b.Close()
}

// sleepBackoff waits Envoy's exponential backoff with full jitter:
// random in [0, min(max, base·2^(attempt-1))).
func sleepBackoff(ctx context.Context, attempt int, base, max time.Duration) bool {
	ceil := base << (attempt - 1)
	if ceil > max || ceil <= 0 {
		ceil = max
	}
	if ceil <= 0 {
		return ctx.Err() == nil
	}
	d := time.Duration(rand.Int64N(int64(ceil)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// doneBody ends the request's accounting (and its span) when the proxy
// closes the body, after trailers have arrived.
type doneBody struct {
	io.ReadCloser
	c       *Cluster
	br      *breaker.Breaker
	h       *Host
	cancel  context.CancelFunc
	retry   bool
	span    trace.Span
	resp    *http.Response
	grpc    bool
	outcome tracing.Outcome
	once    atomic.Bool
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	if b.once.CompareAndSwap(false, true) {
		b.h.Active.Add(-1)
		if b.cancel != nil {
			b.cancel()
		}
		if b.retry {
			b.br.ReleaseRetry()
		}
		b.br.ReleaseRequest()
		b.c.cm.rqActive.Dec()
		if b.span != nil {
			if b.grpc {
				tracing.EndGRPC(b.span, b.resp.StatusCode, tracing.GRPCStatus(b.resp.Header, b.resp.Trailer), b.outcome)
			} else {
				tracing.EndHTTP(b.span, b.resp.StatusCode, b.outcome)
			}
		}
	}
	return err
}

// upstreamHandler serves one outbound listener.
type upstreamHandler struct {
	c       *Cluster
	rp      *httputil.ReverseProxy
	timeout time.Duration
	hashes  []upstream.HashPolicy
}

func newUpstreamHandler(c *Cluster) *upstreamHandler {
	t := newClusterTransport(c)
	h := &upstreamHandler{c: c, timeout: *c.cfg.Timeout, hashes: c.cfg.HashPolicy}
	h.rp = &httputil.ReverseProxy{
		Rewrite:      rewrite,
		Transport:    t,
		BufferPool:   proxyBuffers,
		ErrorHandler: writeLocalReply,
		ErrorLog:     nil,
	}
	return h
}

// rewrite prepares the outbound request (hop-by-hop headers are already
// removed by ReverseProxy per RFC 9110 §7.6.1).
func rewrite(pr *httputil.ProxyRequest) {
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = pr.In.Host
	pr.Out.Host = pr.In.Host
	pr.SetXForwarded()
	if pr.In.Header.Get("X-Request-Id") == "" {
		pr.Out.Header["X-Request-Id"] = []string{newRequestID()}
	}
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
	if ctx != r.Context() {
		r = r.WithContext(ctx)
	}
	h.rp.ServeHTTP(w, r)
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

// newHTTPServer serves HTTP/1.1 and h2c (prior knowledge) on one port.
func newHTTPServer(h http.Handler) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           h,
		Protocols:         &p,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       time.Hour,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: 1000},
		ErrorLog:          nil,
	}
}

func hashString(s string) uint64 { return xxhash.Sum64String(s) }
