package sidecar

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
	"github.com/sidemesh/sidemesh/tracing"
)

// proxyRequest is one request on its way upstream: the state its attempts
// share.
type proxyRequest struct {
	t      *clusterTransport
	req    *http.Request
	ctx    context.Context
	g      breakerPicker // one breaker for the whole request, even if CDS swaps it
	up     tracing.Upstream
	info   *balancer.PickInfo
	isGRPC bool

	hasBody  bool
	prepared bool         // the body is buffered or guarded
	buffered []byte       // a small body, replayable
	guard    *attemptBody // a large one, replayable while unread

	prev    *Host // the previous attempt's host, avoided if possible
	retried bool
	rec     *accessRecord // the access log's record, nil when off
}

// RoundTrip runs the attempts of one request: pick (behind the breaker),
// per-try timeout, trace span, retry decision; each attempt reports its
// outcome through the pick's Done.
func (t *clusterTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c := t.c
	r := &proxyRequest{
		t: t, req: req, ctx: req.Context(), g: c.guarded(),
		up:      tracing.Upstream{Service: c.Name, LBPolicy: c.policyName()},
		isGRPC:  t.forceH2 || strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc"),
		hasBody: req.Body != nil && req.Body != http.NoBody,
	}
	r.info, _ = r.ctx.Value(hashKey{}).(*balancer.PickInfo)
	if r.info == nil {
		r.info = &balancer.PickInfo{}
	}
	r.rec = accessRecordFrom(r.ctx)
	c.cm.rqActive.Inc()
	var lastErr error
	made := 0           // attempts sent
	holdsRetry := false // a retry slot taken before the previous answer was discarded
	for n := 0; ; n++ {
		if n > 0 {
			if !holdsRetry && r.g.acquireRetry() != nil {
				break // the previous failure stands, as in Envoy
			}
			r.retried = true
			c.cm.retries.Inc()
			if !t.retry.sleepBackoff(r.ctx, n) {
				r.g.releaseRetry()
				lastErr = &upstreamError{kind: classify(r.ctx.Err(), r.ctx), err: r.ctx.Err()}
				break
			}
		}
		made++
		resp, next, err := r.attempt(n, n > 0)
		if err == nil {
			if r.rec != nil {
				r.rec.finish(r, made, nil)
			}
			return resp, nil // rqActive ends with the body (doneBody)
		}
		lastErr = err
		if next == noRetry {
			break
		}
		holdsRetry = next == retryHeld
	}
	c.cm.rqActive.Dec()
	if lastErr == nil {
		lastErr = &upstreamError{kind: failReset, err: io.ErrUnexpectedEOF}
	}
	if r.rec != nil {
		r.rec.finish(r, made, lastErr)
	}
	return nil, lastErr
}

// retryDecision says whether another attempt follows.
type retryDecision uint8

const (
	noRetry   retryDecision = iota
	retryFree               // retry; its retry slot is still to take
	retryHeld               // retry; its retry slot is taken
)

// attempt sends attempt n (from 0); retry says it holds a retry slot. It
// returns the response to relay, or the error that stands so far and
// whether to try again.
func (r *proxyRequest) attempt(n int, retry bool) (*http.Response, retryDecision, error) {
	p, err := r.g.pick(r.info, r.prev, retry)
	if err != nil {
		return nil, noRetry, r.unpicked(n, err)
	}
	r.prev = p.Host
	if !r.prepared {
		if err := r.prepareBody(); err != nil {
			// The client's body failed: it went away, stalled, or broke
			// its framing; the endpoint is not to blame.
			kind := classify(err, r.ctx)
			if kind != failStreamIdle && kind != failBadBody {
				kind = failCanceled
			}
			p.Done(DoneInfo{Fail: failCanceled})
			return nil, noRetry, &upstreamError{kind: kind, err: err}
		}
	}
	a, areq := r.begin(p, n)
	if r.rec != nil && a.span != nil && !r.rec.traceID.IsValid() {
		r.rec.traceID = a.span.SpanContext().TraceID()
	}
	tr := r.t.h1
	if r.t.forceH2 || areq.ProtoMajor == 2 {
		tr = r.t.h2
	}
	resp, err := tr.RoundTrip(areq)
	if err != nil {
		next, ferr := r.failed(a, err)
		return nil, next, ferr
	}
	return r.answered(a, resp)
}

// try is one attempt in flight.
type try struct {
	p      picked
	n      int
	ctx    context.Context // the attempt's: per-try timeout, client span
	cancel context.CancelFunc
	span   trace.Span
	start  time.Time
}

// end ends an attempt that leaves nothing to relay.
func (a *try) end(d DoneInfo, status int, o tracing.Outcome) {
	if a.cancel != nil {
		a.cancel()
	}
	a.p.Done(d)
	if a.span != nil {
		tracing.EndHTTP(a.span, status, o)
	}
}

// unpicked is the error of an attempt that found no endpoint: none
// eligible, or the breaker refused it.
func (r *proxyRequest) unpicked(n int, err error) error {
	c := r.t.c
	kind, o := failNoHealthy, tracing.OutcomeNoHealthyUpstream
	if errors.Is(err, breaker.ErrOverflow) {
		kind, o = failOverflow, tracing.OutcomeOverloaded
	} else {
		c.cm.noHealthy.Inc()
	}
	if !r.t.inbound {
		_, span := c.tp.StartClient(r.ctx, r.req, r.up, n)
		tracing.EndHTTP(span, 0, o)
	}
	return &upstreamError{kind: kind, err: err}
}

// begin addresses the request to the picked endpoint and starts the
// attempt: body, attempt-count header, per-try timeout, client span and
// trace context. It returns the request to send.
func (r *proxyRequest) begin(p picked, n int) (*try, *http.Request) {
	t, c, req := r.t, r.t.c, r.req
	req.URL.Host = p.Host.Addr
	if r.buffered != nil {
		buf := r.buffered
		req.Body = io.NopCloser(bytes.NewReader(buf))
		req.ContentLength = int64(len(buf))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	}
	req.Header["X-Sidemesh-Attempt-Count"] = attemptHeader(n + 1)
	a := &try{p: p, n: n, ctx: r.ctx}
	if t.retry.perTry > 0 {
		a.ctx, a.cancel = context.WithTimeout(r.ctx, t.retry.perTry)
	}
	if t.inbound {
		c.tp.Inject(a.ctx, req.Header) // the server span is the parent the app sees
	} else {
		a.ctx, a.span = c.tp.StartClient(a.ctx, req, r.up, n)
		tracing.SetEndpoint(a.span, p.Host.Addr)
		tracing.SetLocality(a.span, p.Priority, p.Zone)
		c.tp.Inject(a.ctx, req.Header)
	}
	a.start = time.Now()
	if a.ctx != r.ctx {
		return a, req.WithContext(a.ctx)
	}
	return a, req
}

// answered handles an attempt's response: discarded for a retry when the
// policy says so and a retry slot is free, relayed otherwise (its body
// ends the attempt).
func (r *proxyRequest) answered(a *try, resp *http.Response) (*http.Response, retryDecision, error) {
	t, c, req, p := r.t, r.t.c, r.req, a.p
	done := DoneInfo{Status: resp.StatusCode, Outlier: outlier.Status(resp.StatusCode), Latency: time.Since(a.start)}
	if r.isGRPC {
		done.Outlier = grpcResult(resp)
	}
	canReplay := r.buffered != nil || !r.hasBody
	if a.n < t.retry.numRetries && canReplay && t.retry.retriableResponse(resp, r.isGRPC) {
		// Take the next attempt's retry slot (after giving back this
		// one's) before discarding this answer: without one, the answer
		// stands (Envoy), rather than a local 503.
		a.p.releaseRetry()
		if r.g.acquireRetry() == nil {
			drainClose(resp.Body)
			a.end(done, resp.StatusCode, tracing.OutcomeRetried)
			return nil, retryHeld, &upstreamError{kind: failReset, host: p.Host.Addr, err: errRetriedStatus}
		}
	}
	o := tracing.OutcomeOK
	if od := p.Host.outlier(); p.Panic && od != nil && od.Ejected() {
		o = tracing.OutcomeEjectedEndpoint
	} else if r.retried {
		o = tracing.OutcomeRetried
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// ReverseProxy relays an upgraded connection through the body,
		// which must stay writable; it answers a mismatched upgrade
		// without closing the body, so refuse that here.
		rwc, ok := resp.Body.(io.ReadWriteCloser)
		if !ok || !upgradeMatches(req.Header, resp.Header) {
			_ = resp.Body.Close()
			a.end(done, resp.StatusCode, o)
			return nil, noRetry, &upstreamError{kind: failReset, host: p.Host.Addr, err: errBadUpgrade}
		}
		db := &doneBody{ReadCloser: resp.Body, c: c, a: a, done: done, resp: resp, grpc: r.isGRPC, outcome: o}
		resp.Body = &upgradeBody{doneBody: db, w: rwc}
		return resp, noRetry, nil
	}
	resp.Body = &doneBody{ReadCloser: resp.Body, c: c, a: a, done: done, resp: resp, grpc: r.isGRPC, outcome: o}
	return resp, noRetry, nil
}

// failed ends an attempt that got no response and decides on a retry.
func (r *proxyRequest) failed(a *try, err error) (retryDecision, error) {
	kind := classify(err, a.ctx)
	d := DoneInfo{Fail: kind}
	var de *dialError
	client := kind == failCanceled || kind == failStreamIdle || kind == failBadBody // not the endpoint's doing
	if !client && kind != failOverflow && !errors.As(err, &de) {
		d.Outlier = outcomeResult(kind) // connect failures: the dialer reported them
	}
	canReplay := r.buffered != nil || !r.hasBody || (r.guard != nil && !r.guard.read.Load())
	retry := !client && kind != failOverflow && r.ctx.Err() == nil &&
		a.n < r.t.retry.numRetries && canReplay && r.t.retry.retriableFailure(kind)
	o := failOutcome(kind)
	if retry {
		o = tracing.OutcomeRetried
	}
	a.end(d, 0, o)
	ue := &upstreamError{kind: kind, host: a.p.Host.Addr, err: err}
	if retry {
		return retryFree, ue
	}
	return noRetry, ue
}

// prepareBody makes the body replayable for retries: a small one is
// buffered, a larger one guarded (replayable only while unread).
func (r *proxyRequest) prepareBody() error {
	r.prepared = true
	req := r.req
	if !r.hasBody || r.t.retry.numRetries == 0 {
		return nil
	}
	if req.ContentLength > 0 && req.ContentLength <= r.t.retry.maxBuffer {
		buf := make([]byte, req.ContentLength)
		if _, err := io.ReadFull(req.Body, buf); err != nil {
			return err
		}
		r.buffered = buf
		return nil
	}
	r.guard = &attemptBody{src: req.Body}
	req.Body = r.guard
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

var (
	errRetriedStatus = errors.New("retriable status and no retry left")
	errBadUpgrade    = errors.New("upstream switched protocols without the requested upgrade")
)

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

func drainClose(b io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, b, 64<<10)
	_ = b.Close()
}
