package sidecar

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
	"weak"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/http2/hpack"

	"github.com/sidemesh/sidemesh/mtls"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/h2relay"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
	"github.com/sidemesh/sidemesh/tracing"
)

// The HTTP/2 path: a downstream HTTP/2 connection (h2c with prior
// knowledge, or "h2" by ALPN over TLS) is served by package h2relay, which
// relays its streams frame by frame to a per-cluster pool of upstream
// HTTP/2 connections; h2Conn and h2Stream below are the sidecar's policy
// for it (the same as the HTTP/1.1 path's: pick behind the breaker,
// retries, timeouts, outlier feedback, metrics, spans, authorization,
// access log).

// h2Engines holds each cluster's relay, made once. The key is weak: once a
// cluster is gone (a reload retired it and its last stream ended), its
// entry goes and its pool's connections close.
var h2Engines struct {
	mu sync.Mutex
	m  map[weak.Pointer[Cluster]]*h2relay.Server
}

// h2For returns the cluster's HTTP/2 relay and upstream pool, made once.
func (s *Sidecar) h2For(c *Cluster) *h2relay.Server {
	key := weak.Make(c)
	h2Engines.mu.Lock()
	defer h2Engines.mu.Unlock()
	if srv := h2Engines.m[key]; srv != nil {
		return srv
	}
	if h2Engines.m == nil {
		h2Engines.m = map[weak.Pointer[Cluster]]*h2relay.Server{}
	}
	cfg := h2RelayConfig(s.config().Limits, c.upstream().IdleTimeout)
	log := c.log
	cfg.Log = func(msg string, args ...any) { log.Debug(msg, args...) }
	srv := h2relay.NewServer(h2relay.NewPool(cfg))
	c.mu.Lock()
	c.onRemoved = append(c.onRemoved, srv.Pool().CloseIdle) // removed hosts free their connections
	c.mu.Unlock()
	h2Engines.m[key] = srv
	runtime.AddCleanup(c, func(key weak.Pointer[Cluster]) {
		h2Engines.mu.Lock()
		srv := h2Engines.m[key]
		delete(h2Engines.m, key)
		h2Engines.mu.Unlock()
		if srv != nil {
			srv.Pool().Close()
		}
	}, key)
	return srv
}

// h2RelayConfig is the relay's configuration from the limits (nil: the
// relay's defaults) and the upstream connections' idle timeout.
func h2RelayConfig(lim *LimitsConfig, idle time.Duration) h2relay.Config {
	cfg := h2relay.Config{IdleTimeout: idle}
	if lim != nil {
		if lim.MaxConcurrentStreams != nil {
			cfg.MaxConcurrentStreams = uint32(*lim.MaxConcurrentStreams)
			if *lim.MaxConcurrentStreams == 0 {
				cfg.MaxConcurrentStreams = 1<<31 - 1 // 0: unbounded, as Envoy's default
			}
		}
		if lim.StreamIdleTimeout != nil {
			cfg.StreamIdleTimeout = *lim.StreamIdleTimeout
		}
		if lim.MaxRequestsPerConnection != nil {
			cfg.MaxStreamsPerConnection = *lim.MaxRequestsPerConnection
		}
		if lim.MaxRequestHeadersKB != nil {
			cfg.MaxHeaderListSize = uint32(*lim.MaxRequestHeadersKB) << 10
			if *lim.MaxRequestHeadersKB == 0 {
				cfg.MaxHeaderListSize = 16 << 20 // 0: off (bounded all the same)
			}
		}
	}
	return cfg
}

// useH2Relay makes srv hand its HTTP/2 connections to the relay of c, and
// its Shutdown drain them: GOAWAY, then each ends when its streams have.
func (s *Sidecar) useH2Relay(srv *h1Server, c *Cluster) {
	drain, cancel := context.WithCancel(context.Background())
	srv.h2 = func(ctx context.Context, conn net.Conn) { s.serveH2Drain(drain, c, conn) }
	srv.h2base.RegisterOnShutdown(cancel) // Shutdown's GOAWAY
}

// serveH2 serves one downstream HTTP/2 connection for cluster c: conn
// opens with the client preface (not yet read). It returns when the
// connection has ended, and closes it.
func (s *Sidecar) serveH2(c *Cluster, conn net.Conn) {
	s.serveH2Drain(context.Background(), c, conn)
}

// serveH2Drain is serveH2; canceling drain sends GOAWAY and lets the
// connection's streams finish.
func (s *Sidecar) serveH2Drain(drain context.Context, c *Cluster, conn net.Conn) {
	hc := &h2Conn{s: s, c: c, remote: conn.RemoteAddr().String()}
	if host, _, err := net.SplitHostPort(hc.remote); err == nil {
		hc.remoteHost = host
	}
	if tc, ok := conn.(*tls.Conn); ok {
		st := tc.ConnectionState()
		hc.tls = &st
	}
	if err := s.h2For(c).ServeConn(drain, conn, nil, hc); err != nil {
		c.log.Debug("HTTP/2 connection ended", "remote", hc.remote, "err", err)
	}
}

// h2Conn is the policy for the streams of one downstream connection.
type h2Conn struct {
	s          *Sidecar
	c          *Cluster
	remote     string
	remoteHost string // remote's host ("" when it has none), for x-forwarded-for
	tls        *tls.ConnectionState
	pool       *h2relay.Pool // the upstream connections (nil: the relay serving the connection's)
}

// h2Stream is one stream's request through the cluster: the state its
// attempts share (proxyRequest's, for HTTP/2).
type h2Stream struct {
	hc      *h2Conn
	up      *upstreamHandler // the handler in force when the stream began
	g       breakerPicker
	info    *balancer.PickInfo
	noHash  balancer.PickInfo // info when the stream has no hash
	ctx     context.Context   // the trace context (server span inbound, the app's outbound)
	start   time.Time
	dl      time.Time
	isGRPC  bool
	reqID   string
	method  string
	path    string
	auth    string
	grpcTO  bool // the request carries grpc-timeout (re-encoded with what is left)
	srvSpan trace.Span

	prev       *Host
	a          h2Attempt // the attempt in flight
	retried    bool
	transp     int // transparent retries (streams the upstream never processed)
	status     int // the final response status (0: none)
	grpcStatus int
	flags      uint8
	endpoint   string
	attempts   int
}

// h2Attempt is one attempt in flight.
type h2Attempt struct {
	p     picked
	span  trace.Span
	start time.Time
	held  bool // the pick holds a retry slot
}

// Open starts a stream: authorization (inbound mTLS), the trace context,
// the deadline (the upstream timeout, shortened by grpc-timeout), the hash.
func (hc *h2Conn) Open(req *h2relay.Request) (h2relay.Stream, *h2relay.Reply) {
	s, c := hc.s, hc.c
	st := &h2Stream{hc: hc, start: time.Now(), ctx: context.Background(), grpcStatus: -1,
		method: req.Header.Get(":method"), path: req.Header.Get(":path"), auth: req.Header.Get(":authority")}
	if st.auth == "" {
		st.auth = req.Header.Get("host")
	}
	st.isGRPC = c.cfg.Protocol == "grpc" || strings.HasPrefix(req.Header.Get("content-type"), "application/grpc")
	st.reqID = req.Header.Get("x-request-id")
	if st.reqID == "" {
		st.reqID = newRequestID()
	}
	slot, _ := s.handlerFor(c).(*handlerSlot)
	st.up = slot.h.Load().up
	st.g = c.guarded()
	c.cm.rqActive.Inc()
	if c.inbound && s.inboundClosing.Load() {
		// The drain's inbound grace: this connection takes no more streams
		// (HTTP/1.1 answers Connection: close meanwhile).
		req.GoAway()
	}
	if c.inbound {
		if c.tp.Enabled() || s.tp.Enabled() {
			st.ctx, st.srvSpan = s.tp.StartServer(st.ctx, hc.httpRequest(req.Header, st))
		}
	} else {
		s.act.begin()
		if c.tp.Enabled() {
			st.ctx = c.tp.Extract(st.ctx, httpHeader(req.Header))
		}
	}
	if d := st.up.timeout; d > 0 {
		st.dl = st.start.Add(d)
	}
	if v := req.Header.Get("grpc-timeout"); v != "" {
		st.grpcTO = true
		if d, ok := parseGRPCTimeout(v); ok {
			if gd := st.start.Add(d); st.dl.IsZero() || gd.Before(st.dl) {
				st.dl = gd
			}
		}
	}
	if len(st.up.hashes) > 0 && c.usesHash() {
		st.info = hc.hash(st.up, req.Header)
	}
	if st.info == nil {
		st.info = &st.noHash
	}
	if lim := s.config().Limits; lim != nil && lim.MaxHeadersCount != nil && *lim.MaxHeadersCount > 0 && len(req.Header) > *lim.MaxHeadersCount+4 {
		return st, st.local(http.StatusRequestHeaderFieldsTooLarge, "request header fields too large\n", false)
	}
	if c.inbound {
		if rep := hc.authorize(req.Header, st); rep != nil {
			return st, rep
		}
	}
	return st, nil
}

// authorize checks an inbound mTLS stream's source against the intentions.
func (hc *h2Conn) authorize(h h2relay.Header, st *h2Stream) *h2relay.Reply {
	mt := hc.s.mesh
	if mt == nil || mt.authz == nil || hc.tls == nil {
		return nil
	}
	id, _ := mtls.PeerID(hc.tls)
	d := mt.authz.Request(mtls.ServiceOf(id), hc.httpRequest(h, st))
	if mt.decide(d) {
		return nil
	}
	hc.s.log.Debug("mtls: request denied", "source", id.String(), "destination", mt.service, "reason", d.Reason, "path", st.path)
	code, body := localReply(&authzDenied{source: id.String(), destination: mt.service, reason: d.Reason})
	return st.local(code, body, false)
}

// httpRequest is the request's header as net/http's, for the APIs that take
// one (intentions, server spans).
func (hc *h2Conn) httpRequest(h h2relay.Header, st *h2Stream) *http.Request {
	u := &url.URL{Path: st.path}
	if i := strings.IndexByte(st.path, '?'); i >= 0 {
		u.Path, u.RawQuery = st.path[:i], st.path[i+1:]
	}
	return &http.Request{Method: st.method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2, Header: httpHeader(h),
		Host: st.auth, RemoteAddr: hc.remote, TLS: hc.tls, RequestURI: st.path}
}

// httpHeader copies the regular fields of h into an http.Header.
func httpHeader(h h2relay.Header) http.Header {
	out := make(http.Header, len(h))
	for _, f := range h {
		if !strings.HasPrefix(f.Name, ":") {
			k := http.CanonicalHeaderKey(f.Name)
			out[k] = append(out[k], f.Value)
		}
	}
	return out
}

func (hc *h2Conn) hash(up *upstreamHandler, h h2relay.Header) *balancer.PickInfo {
	for _, hp := range up.hashes {
		if hp.Header != "" {
			if v := h.Get(strings.ToLower(hp.Header)); v != "" {
				return &balancer.PickInfo{Hash: hashString(v), HasHash: true}
			}
			continue
		}
		if hp.SourceIP {
			if host, _, err := net.SplitHostPort(hc.remote); err == nil {
				return &balancer.PickInfo{Hash: hashString(host), HasHash: true}
			}
		}
	}
	return nil
}

// parseGRPCTimeout parses a grpc-timeout value (at most 8 digits and a
// unit: H, M, S, m, u, n).
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// formatGRPCTimeout writes d as grpc-timeout (milliseconds, rounded up,
// or microseconds below one).
func formatGRPCTimeout(d time.Duration) string {
	if d <= 0 {
		return "1n"
	}
	if d < time.Millisecond {
		return strconv.FormatInt(int64((d+time.Microsecond-1)/time.Microsecond), 10) + "u"
	}
	return strconv.FormatInt(int64((d+time.Millisecond-1)/time.Millisecond), 10) + "m"
}

func (st *h2Stream) Deadline() time.Time { return st.dl }

// ReplayLimit is retry_policy.max_buffer_bytes: what is kept of a request
// for a retry (or, without retries, for a stream an upstream never
// processed).
func (st *h2Stream) ReplayLimit() int64 { return st.up.t.retry.maxBuffer }

// Attempt picks attempt n's endpoint behind the breaker (a retry after its
// backoff) and sets the headers the sidecar adds.
func (st *h2Stream) Attempt(n int, h *h2relay.Header) (h2relay.Target, *h2relay.Reply) {
	hc, c := st.hc, st.hc.c
	t := st.up.t
	held := st.a.held // a policy retry: its slot is taken (a transparent one has none)
	st.a = h2Attempt{}
	if held {
		ctx, cancel := context.WithDeadline(context.Background(), st.deadlineOr())
		ok := t.retry.sleepBackoff(ctx, n-st.transp)
		cancel()
		if !ok {
			st.g.releaseRetry()
			return h2relay.Target{}, st.failReply(failTimeout, context.DeadlineExceeded)
		}
	}
	p, err := st.g.pick(st.info, st.prev, held) // a failed pick gives the retry slot back
	if err != nil {
		kind, o := failNoHealthy, tracing.OutcomeNoHealthyUpstream
		if errors.Is(err, breaker.ErrOverflow) {
			kind, o = failOverflow, tracing.OutcomeOverloaded
		} else {
			c.cm.noHealthy.Inc()
		}
		if !c.inbound && c.tp.Enabled() {
			_, span := c.tp.StartClient(st.ctx, hc.httpRequest(*h, st), tracing.Upstream{Service: c.Name, LBPolicy: c.policyName()}, n)
			tracing.EndHTTP(span, 0, o)
		}
		st.flags |= flagsOf(kind)
		return h2relay.Target{}, st.failReply(kind, err)
	}
	st.prev = p.Host
	st.attempts++
	st.endpoint = p.Host.Addr
	st.a = h2Attempt{p: p, start: st.start}
	if n > 0 {
		st.a.start = time.Now() // the first attempt starts with the stream
	}
	if st.auth == "" {
		h.Set(":authority", p.Host.Addr)
	}
	if !h.Has("x-request-id") {
		h.Set("x-request-id", st.reqID)
	}
	h.Set("x-sidemesh-attempt-count", attemptHeader(n + 1)[0])
	if host := hc.remoteHost; host != "" {
		if prior := h.Get("x-forwarded-for"); prior != "" {
			h.Set("x-forwarded-for", prior+", "+host)
		} else {
			h.Set("x-forwarded-for", host)
		}
	}
	if !h.Has("x-forwarded-proto") {
		proto := "http"
		if hc.tls != nil {
			proto = "https"
		}
		h.Set("x-forwarded-proto", proto)
	}
	if st.grpcTO && !st.dl.IsZero() {
		h.Set("grpc-timeout", formatGRPCTimeout(time.Until(st.dl)))
	}
	inject := func(ctx context.Context) {
		hc.s.tp.InjectFields(ctx, h.Del, h.Set)
	}
	if c.inbound {
		if st.srvSpan != nil {
			inject(st.ctx) // the server span is the parent the app sees
		}
	} else if c.tp.Enabled() {
		var actx context.Context
		actx, st.a.span = c.tp.StartClient(st.ctx, hc.httpRequest(*h, st), tracing.Upstream{Service: c.Name, LBPolicy: c.policyName()}, n)
		tracing.SetEndpoint(st.a.span, p.Host.Addr)
		tracing.SetLocality(st.a.span, p.Priority, p.Zone)
		c.tp.InjectFields(actx, h.Del, h.Set)
	}
	return h2relay.Target{Addr: p.Host.Addr, Dial: st.dial, Timeout: t.retry.perTry, Pool: hc.pool}, nil
}

func (st *h2Stream) deadlineOr() time.Time {
	if st.dl.IsZero() {
		return time.Now().Add(time.Hour)
	}
	return st.dl
}

func (st *h2Stream) dial(ctx context.Context, addr string) (net.Conn, error) {
	if !st.dl.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, st.dl)
		defer cancel()
	}
	return st.hc.c.dialContextH2(ctx, "tcp", addr)
}

// kind classifies an attempt's failure.
func (st *h2Stream) kind(r *h2relay.Result) failKind {
	var de *dialError
	switch {
	case r.Canceled:
		return failCanceled
	case r.Timeout:
		return failTimeout
	case r.Connect && errors.Is(r.Err, breaker.ErrOverflow):
		return failOverflow
	case r.Connect && (errors.As(r.Err, &de) || isDialError(r.Err)):
		return failConnect
	case r.Connect && errors.Is(r.Err, context.DeadlineExceeded):
		return failTimeout
	case r.Connect:
		return failConnect
	case r.Unprocessed:
		return failRefusedStream
	}
	if !st.dl.IsZero() && time.Until(st.dl) <= 0 {
		// The upstream saw the same deadline (we sent it grpc-timeout)
		// and reset the stream before our timer ran: still a timeout.
		return failTimeout
	}
	return failReset
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// Retry decides on attempt n's outcome before anything was relayed: a
// response header the retry policy covers, or a failure it covers. An
// upstream that never processed the stream (REFUSED_STREAM, GOAWAY) gets
// up to two transparent retries outside the policy, as Envoy does.
func (st *h2Stream) Retry(n int, r *h2relay.Result, replayable bool) bool {
	c, t := st.hc.c, st.up.t
	if !replayable || (!st.dl.IsZero() && time.Until(st.dl) <= 0) {
		return false
	}
	if r.Status == 0 && r.Unprocessed && st.transp < 2 {
		st.transp++
		st.a.held = false
		return true
	}
	if n-st.transp >= t.retry.numRetries {
		return false // no retry left (the policy's checks below would all say so)
	}
	retry := false
	if r.Status > 0 {
		retry = t.retry.retriableStatus(r.Status, lookupField(r.Header, "grpc-status"), st.isGRPC)
	} else {
		k := st.kind(r)
		retry = k != failCanceled && k != failOverflow && t.retry.retriableFailure(k)
	}
	if !retry {
		return false
	}
	// The next attempt's retry slot, taken before this answer is discarded:
	// without one, the answer stands (Envoy).
	st.a.p.releaseRetry()
	if st.g.acquireRetry() != nil {
		return false
	}
	c.cm.retries.Inc()
	st.retried = true
	st.flags |= flagRetried
	st.a.held = true
	return true
}

func lookupField(fs []hpack.HeaderField, name string) string {
	for _, f := range fs {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// End reports attempt n's outcome to the pick (outlier detection, breaker,
// per-endpoint counters) and ends its span.
func (st *h2Stream) End(n int, r *h2relay.Result) {
	p := st.a.p
	if p.Host == nil {
		return
	}
	d := DoneInfo{Status: r.Status}
	o := tracing.OutcomeOK
	if r.Status > 0 {
		d.Outlier = outlier.Status(r.Status)
		if st.isGRPC {
			d.Outlier = grpcOutlier(r)
		}
		if !st.a.start.IsZero() {
			d.Latency = time.Since(st.a.start)
		}
		if r.Err != nil && !r.Retried {
			o = tracing.OutcomeReset // the response broke off
		}
	} else {
		k := st.kind(r)
		d.Fail = k
		var de *dialError
		if k != failCanceled && k != failOverflow && !errors.As(r.Err, &de) {
			d.Outlier = outcomeResult(k)
		}
		o = failOutcome(k)
		st.flags |= flagsOf(k)
	}
	if r.Retried {
		o = tracing.OutcomeRetried
	} else if od := p.Host.outlier(); p.Panic && od != nil && od.Ejected() {
		o = tracing.OutcomeEjectedEndpoint
	} else if st.retried && o == tracing.OutcomeOK {
		o = tracing.OutcomeRetried
	}
	if !r.Retried {
		st.status = r.Status
		st.grpcStatus = r.GRPCStatus()
	}
	p.Done(d) // a retry slot taken for the next attempt (st.a.held) stays for its pick
	if span := st.a.span; span != nil {
		if st.isGRPC {
			tracing.EndGRPC(span, r.Status, r.GRPCStatus(), o)
		} else {
			tracing.EndHTTP(span, r.Status, o)
		}
	}
	st.a.p, st.a.span = picked{}, nil
}

// grpcOutlier is what outlier detection counts for a gRPC response: the
// grpc-status (trailers, or a trailers-only header) when the HTTP status is
// 200, else the HTTP status (as grpcResult).
func grpcOutlier(r *h2relay.Result) outlier.Result {
	if r.Status == 200 {
		if g := r.GRPCStatus(); g >= 0 {
			return outlier.GRPCStatus(uint32(g))
		}
	}
	return outlier.Status(r.Status)
}

// Reply is the local answer for a stream that got no response.
func (st *h2Stream) Reply(r *h2relay.Result) *h2relay.Reply {
	k := st.kind(r)
	if k == failCanceled {
		return nil
	}
	host := ""
	if st.prev != nil {
		host = st.prev.Addr
	}
	return st.failReply(k, &upstreamError{kind: k, host: host, err: r.Err})
}

// failReply is the local reply for err (localreply.go's mapping).
func (st *h2Stream) failReply(k failKind, err error) *h2relay.Reply {
	code, body := localReply(err)
	if code == 0 {
		return nil
	}
	return st.local(code, body, errors.Is(err, breaker.ErrOverflow) || k == failOverflow)
}

// local builds a local reply: the HTTP answer of writeLocalReply, or for a
// gRPC request its trailers-only form (HTTP 200, grpc-status from the HTTP
// status as Envoy maps it, the body as grpc-message).
func (st *h2Stream) local(code int, body string, overloaded bool) *h2relay.Reply {
	st.status = code
	if st.isGRPC {
		st.grpcStatus = grpcStatusOf(code)
	}
	return h2LocalReply(code, body, overloaded, st.isGRPC)
}

// h2LocalReply is local's answer for a stream with no policy of its own.
func h2LocalReply(code int, body string, overloaded, isGRPC bool) *h2relay.Reply {
	rep := &h2relay.Reply{Status: code}
	if overloaded {
		rep.Header = append(rep.Header, hpack.HeaderField{Name: "x-sidemesh-overloaded", Value: "true"})
	}
	rep.Header = append(rep.Header, hpack.HeaderField{Name: "x-sidemesh-local-reply", Value: "true"})
	if isGRPC {
		g := grpcStatusOf(code)
		rep.Status = 200
		rep.Header = append(rep.Header,
			hpack.HeaderField{Name: "content-type", Value: "application/grpc"},
			hpack.HeaderField{Name: "grpc-status", Value: strconv.Itoa(g)},
			hpack.HeaderField{Name: "grpc-message", Value: grpcMessage(strings.TrimSpace(body))})
		return rep
	}
	rep.Header = append(rep.Header, hpack.HeaderField{Name: "content-type", Value: "text/plain"})
	rep.Body = []byte(body)
	return rep
}

// grpcStatusOf maps an HTTP status to a gRPC code (gRPC's HTTP to gRPC
// status mapping, as Envoy applies it to local replies).
func grpcStatusOf(code int) int {
	switch code {
	case 400:
		return 13 // INTERNAL
	case 401:
		return 16 // UNAUTHENTICATED
	case 403:
		return 7 // PERMISSION_DENIED
	case 404:
		return 12 // UNIMPLEMENTED
	case 429, 502, 503:
		return 14 // UNAVAILABLE
	case 504:
		return 4 // DEADLINE_EXCEEDED
	}
	return 2 // UNKNOWN
}

// grpcMessage percent-encodes a grpc-message value (gRPC over HTTP/2).
func grpcMessage(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch >= ' ' && ch <= '~' && ch != '%' {
			b.WriteByte(ch)
			continue
		}
		b.WriteString("%" + strings.ToUpper(strconv.FormatUint(uint64(ch)|0x100, 16)[1:]))
	}
	return b.String()
}

// Close ends the stream's accounting: active requests, the outbound
// activity (drain), the inbound metrics and server span, the access log.
func (st *h2Stream) Close() {
	hc, s, c := st.hc, st.hc.s, st.hc.c
	if st.a.held {
		st.g.releaseRetry()
		st.a.held = false
	}
	c.cm.rqActive.Dec()
	if c.inbound {
		s.m.inboundRq.WithLabelValues(classes[statusClass(st.status)]).Inc()
		s.m.inboundDuration.Observe(time.Since(st.start).Seconds())
		if st.srvSpan != nil {
			if st.isGRPC {
				tracing.EndGRPC(st.srvSpan, st.status, st.grpcStatus, tracing.OutcomeOK)
			} else {
				tracing.EndHTTP(st.srvSpan, st.status, tracing.OutcomeOK)
			}
		}
	} else {
		s.act.end()
	}
	if l := s.alog.Load(); l != nil {
		e := accessEntry{start: st.start, duration: time.Since(st.start), method: st.method, authority: st.auth,
			path: st.path, protocol: "HTTP/2.0", status: st.status, flags: st.flags, attempts: st.attempts,
			upstream: c.Name, endpoint: st.endpoint, requestID: st.reqID}
		if sc := trace.SpanContextFromContext(st.ctx); sc.IsValid() {
			e.traceID = sc.TraceID()
		}
		if hc.tls != nil {
			if id, ok := mtls.PeerID(hc.tls); ok {
				e.source = id.String()
			}
		}
		l.log(e)
	}
}
