package tracing

import (
	"context"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Span attributes sidemesh adds to the OpenTelemetry semantic conventions
// (semconv v1.37.0: HTTP, RPC and network attributes).
const (
	// AttrUpstream is the upstream service (cluster) a client span goes to.
	AttrUpstream = attribute.Key("sidemesh.upstream")
	// AttrLBPolicy is that upstream's load-balancing policy.
	AttrLBPolicy = attribute.Key("sidemesh.lb_policy")
	// AttrPriority is the priority level of the endpoint an attempt went to
	// (0 = preferred; a higher one means failover).
	AttrPriority = attribute.Key("sidemesh.upstream.priority")
	// AttrZone is the zone of that endpoint, when it has one.
	AttrZone = attribute.Key("sidemesh.upstream.zone")
	// AttrOutcome is what the proxy made of the request or attempt; see Outcome.
	AttrOutcome = attribute.Key("sidemesh.outcome")
	// AttrBytesSent is, on a TCP span, the bytes copied from the downstream
	// connection to the upstream one.
	AttrBytesSent = attribute.Key("sidemesh.bytes_sent")
	// AttrBytesReceived is, on a TCP span, the bytes copied from the upstream
	// connection to the downstream one.
	AttrBytesReceived = attribute.Key("sidemesh.bytes_received")
)

// Outcome is what the proxy made of one request (server span), one attempt
// (client span) or one connection (TCP span). Every outcome but OutcomeOK
// marks the span as an error.
type Outcome uint8

// Outcomes, recorded as sidemesh.outcome.
const (
	// OutcomeOK: the upstream's response (whatever its status) was passed on.
	OutcomeOK Outcome = iota
	// OutcomeRetried: this attempt failed and the request was tried again;
	// the next attempt has its own span.
	OutcomeRetried
	// OutcomeOverloaded: a circuit breaker refused the request (503,
	// x-sidemesh-overloaded).
	OutcomeOverloaded
	// OutcomeNoHealthyUpstream: no eligible endpoint (503).
	OutcomeNoHealthyUpstream
	// OutcomeEjectedEndpoint: this attempt's failure made outlier detection
	// eject the endpoint.
	OutcomeEjectedEndpoint
	// OutcomeTimeout: the upstream did not answer in time (504).
	OutcomeTimeout
	// OutcomeConnectFailure: the endpoint could not be connected to.
	OutcomeConnectFailure
	// OutcomeReset: the connection was reset before a complete response.
	OutcomeReset
	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	OutcomeOK:                "ok",
	OutcomeRetried:           "retried",
	OutcomeOverloaded:        "overloaded",
	OutcomeNoHealthyUpstream: "no_healthy_upstream",
	OutcomeEjectedEndpoint:   "ejected_endpoint",
	OutcomeTimeout:           "timeout",
	OutcomeConnectFailure:    "connect_failure",
	OutcomeReset:             "reset",
}

// String returns the sidemesh.outcome value, e.g. "no_healthy_upstream".
func (o Outcome) String() string {
	if o < numOutcomes {
		return outcomeNames[o]
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// Upstream names the cluster a client or TCP span goes to.
type Upstream struct {
	Service  string // sidemesh.upstream
	LBPolicy string // sidemesh.lb_policy
}

var (
	noopProvider = noop.NewTracerProvider()
	serverStart  = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)}
	clientStart  = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)}
)

// Extract returns ctx carrying the trace context found in h (a remote
// parent), or ctx itself when h has none or tracing is off.
func (p *Provider) Extract(ctx context.Context, h http.Header) context.Context {
	if !p.Enabled() {
		return ctx
	}
	return p.prop.Extract(ctx, headerCarrier(h))
}

// Inject writes the trace context of ctx's span into h, first removing the
// headers of the configured propagators that h already has (a proxy copies
// the downstream request's headers, and the downstream trace context must not
// reach the upstream beside the new one). It does nothing when tracing is off:
// then the headers pass through untouched.
func (p *Provider) Inject(ctx context.Context, h http.Header) {
	if !p.Enabled() {
		return
	}
	for _, k := range p.owned {
		delete(h, k)
	}
	p.prop.Inject(ctx, headerCarrier(h))
}

// StartServer extracts the trace context of r and starts the server span of
// a request that arrived on the inbound listener; a request without one
// starts a trace. The span is named after the method ("GET"), or for gRPC
// after the full method ("pkg.Service/Method"). The returned context carries
// the span: pass it to Inject for the request to the local app. End the span
// with EndHTTP or EndGRPC.
func (p *Provider) StartServer(ctx context.Context, r *http.Request) (context.Context, trace.Span) {
	if !p.Enabled() {
		return ctx, noop.Span{}
	}
	ctx = p.Extract(ctx, r.Header)
	grpcMethod, isGRPC := grpcFullMethod(r)
	name, method, known := spanName(r.Method)
	if isGRPC {
		name = grpcMethod
	}
	ctx, span := p.tracer.Start(ctx, name, serverStart...)
	if !span.IsRecording() {
		return ctx, span
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	// One SetAttributes call: the SDK grows its slice once.
	var buf [12]attribute.KeyValue
	kv := append(buf[:0],
		semconv.HTTPRequestMethodKey.String(method),
		semconv.URLPath(r.URL.Path),
		semconv.URLScheme(scheme),
		semconv.NetworkProtocolVersion(protoVersion(r)),
	)
	if !known {
		kv = append(kv, semconv.HTTPRequestMethodOriginal(r.Method))
	}
	if host, port, ok := splitHostPort(r.Host); ok {
		kv = append(kv, semconv.ServerAddress(host))
		if port > 0 {
			kv = append(kv, semconv.ServerPort(port))
		}
	}
	if host, port, ok := splitHostPort(r.RemoteAddr); ok {
		kv = append(kv, semconv.NetworkPeerAddress(host), semconv.NetworkPeerPort(port))
	}
	if ua := r.Header.Get("User-Agent"); ua != "" {
		kv = append(kv, semconv.UserAgentOriginal(ua))
	}
	if isGRPC {
		kv = appendGRPCMethod(kv, grpcMethod)
	}
	span.SetAttributes(kv...)
	return ctx, span
}

// StartClient starts the client span of one attempt of a request through an
// upstream listener. ctx carries the trace context of the request from the
// local app (Extract it once per request, not per attempt: the attempts are
// siblings); attempt counts from 0 and is recorded as
// http.request.resend_count from the first retry on. Record the chosen
// endpoint with SetEndpoint, Inject the returned context into the attempt's
// headers, and End the span with EndHTTP or EndGRPC. A request refused before
// any endpoint is chosen (no healthy upstream, overloaded) still gets a span.
func (p *Provider) StartClient(ctx context.Context, r *http.Request, up Upstream, attempt int) (context.Context, trace.Span) {
	if !p.Enabled() {
		return ctx, noop.Span{}
	}
	grpcMethod, isGRPC := grpcFullMethod(r)
	name, method, known := spanName(r.Method)
	if isGRPC {
		name = grpcMethod
	}
	ctx, span := p.tracer.Start(ctx, name, clientStart...)
	if !span.IsRecording() {
		return ctx, span
	}
	var buf [10]attribute.KeyValue
	kv := append(buf[:0],
		semconv.HTTPRequestMethodKey.String(method),
		semconv.URLPath(r.URL.Path),
		semconv.URLScheme("http"),
		AttrUpstream.String(up.Service),
		AttrLBPolicy.String(up.LBPolicy),
	)
	if !known {
		kv = append(kv, semconv.HTTPRequestMethodOriginal(r.Method))
	}
	if attempt > 0 {
		kv = append(kv, semconv.HTTPRequestResendCount(attempt))
	}
	if isGRPC {
		kv = appendGRPCMethod(kv, grpcMethod)
	}
	span.SetAttributes(kv...)
	return ctx, span
}

// StartTCP starts the client span of one TCP connection through an upstream
// listener; it starts a trace (TCP carries no trace context). Record the
// endpoint with SetEndpoint and End the span with EndTCP.
func (p *Provider) StartTCP(ctx context.Context, up Upstream) (context.Context, trace.Span) {
	if !p.Enabled() {
		return ctx, noop.Span{}
	}
	ctx, span := p.tracer.Start(ctx, "tcp "+up.Service, clientStart...)
	if span.IsRecording() {
		span.SetAttributes(
			semconv.NetworkTransportTCP,
			AttrUpstream.String(up.Service),
			AttrLBPolicy.String(up.LBPolicy),
		)
	}
	return ctx, span
}

// SetEndpoint records the endpoint an attempt or connection went to, as
// server.address and server.port, and as network.peer.address and
// network.peer.port when the address is an IP.
func SetEndpoint(span trace.Span, addr string) {
	if !span.IsRecording() {
		return
	}
	host, port, ok := splitHostPort(addr)
	if !ok {
		span.SetAttributes(semconv.ServerAddress(addr))
		return
	}
	if _, err := netip.ParseAddr(host); err == nil {
		span.SetAttributes(semconv.ServerAddress(host), semconv.ServerPort(port),
			semconv.NetworkPeerAddress(host), semconv.NetworkPeerPort(port))
		return
	}
	span.SetAttributes(semconv.ServerAddress(host), semconv.ServerPort(port))
}

// SetLocality records the priority level and zone of the endpoint an
// attempt or connection went to.
func SetLocality(span trace.Span, priority uint32, zone string) {
	if !span.IsRecording() {
		return
	}
	if zone == "" {
		span.SetAttributes(AttrPriority.Int64(int64(priority)))
		return
	}
	span.SetAttributes(AttrPriority.Int64(int64(priority)), AttrZone.String(zone))
}

// EndHTTP records the response status (0: none was received) and the outcome,
// and ends span. Following the HTTP semantic conventions a client span is an
// error from status 400 on, a server span from 500 on; any outcome but
// OutcomeOK is an error too.
func EndHTTP(span trace.Span, status int, o Outcome) {
	if span.IsRecording() {
		setResult(span, status, o, statusIsError(span, status))
	}
	span.End()
}

// EndGRPC is EndHTTP for a gRPC call; code is the grpc-status (see
// GRPCStatus), negative when there was none. Following the RPC semantic
// conventions a client span is an error for any code but OK, a server span
// for UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and
// DATA_LOSS.
func EndGRPC(span trace.Span, status, code int, o Outcome) {
	if span.IsRecording() {
		isErr := statusIsError(span, status)
		var extra []attribute.KeyValue
		if code >= 0 {
			extra = []attribute.KeyValue{semconv.RPCGRPCStatusCodeKey.Int(code)}
			if spanKind(span) == trace.SpanKindServer {
				switch code {
				case 2, 4, 12, 13, 14, 15:
					isErr = true
				}
			} else if code != 0 {
				isErr = true
			}
		}
		setResult(span, status, o, isErr, extra...)
	}
	span.End()
}

// EndTCP records the bytes copied each way and the outcome, and ends span.
func EndTCP(span trace.Span, sent, received int64, o Outcome) {
	if span.IsRecording() {
		setResult(span, 0, o, false, AttrBytesSent.Int64(sent), AttrBytesReceived.Int64(received))
	}
	span.End()
}

// GRPCStatus returns the grpc-status of a response: from the trailers, or
// from the headers of a trailers-only response; -1 when there is none.
func GRPCStatus(header, trailer http.Header) int {
	v := trailer.Get("Grpc-Status")
	if v == "" {
		v = header.Get("Grpc-Status")
	}
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

func setResult(span trace.Span, status int, o Outcome, statusErr bool, extra ...attribute.KeyValue) {
	var buf [6]attribute.KeyValue
	kv := append(buf[:0], extra...)
	kv = append(kv, AttrOutcome.String(o.String()))
	if status > 0 {
		kv = append(kv, semconv.HTTPResponseStatusCode(status))
	}
	switch {
	case statusErr && status > 0:
		kv = append(kv, semconv.ErrorTypeKey.String(strconv.Itoa(status)))
	case o != OutcomeOK:
		kv = append(kv, semconv.ErrorTypeKey.String(o.String()))
	}
	span.SetAttributes(kv...)
	switch {
	case o != OutcomeOK:
		span.SetStatus(codes.Error, o.String())
	case statusErr:
		span.SetStatus(codes.Error, "")
	}
}

func statusIsError(span trace.Span, status int) bool {
	if status >= 500 {
		return true
	}
	return status >= 400 && spanKind(span) != trace.SpanKindServer
}

// spanKind reads the kind of an SDK span (sdktrace.ReadOnlySpan has it).
func spanKind(span trace.Span) trace.SpanKind {
	if k, ok := span.(interface{ SpanKind() trace.SpanKind }); ok {
		return k.SpanKind()
	}
	return trace.SpanKindUnspecified
}

// spanName returns the span name and http.request.method for an HTTP
// method: known methods as they are, others as "HTTP" and "_OTHER" (HTTP
// semantic conventions, "Name" and "http.request.method").
func spanName(m string) (name, method string, known bool) {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m, m, true
	case "":
		return http.MethodGet, http.MethodGet, true // net/http: "" means GET
	}
	return "HTTP", "_OTHER", false
}

// grpcFullMethod returns "pkg.Service/Method" for a gRPC request
// (content-type application/grpc[+proto|...], path /pkg.Service/Method).
func grpcFullMethod(r *http.Request) (string, bool) {
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return "", false
	}
	p := r.URL.Path
	if len(p) < 2 || p[0] != '/' {
		return "", false
	}
	return p[1:], true
}

func appendGRPCMethod(kv []attribute.KeyValue, full string) []attribute.KeyValue {
	kv = append(kv, semconv.RPCSystemGRPC)
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		kv = append(kv, semconv.RPCService(full[:i]), semconv.RPCMethod(full[i+1:]))
	}
	return kv
}

func protoVersion(r *http.Request) string {
	switch {
	case r.ProtoMajor == 2:
		return "2"
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return "1.0"
	case r.ProtoMajor == 3:
		return "3"
	}
	return "1.1"
}

// splitHostPort splits "host:port", "[v6]:port", "host" or "[v6]" without
// allocating (net.SplitHostPort allocates its errors); a missing or bad port
// gives port 0. ok is false for an empty host.
func splitHostPort(s string) (host string, port int, ok bool) {
	host = s
	if i := strings.LastIndexByte(s, ':'); i >= 0 && strings.IndexByte(s[i:], ']') < 0 {
		h := s[:i]
		if !strings.Contains(h, ":") || (strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]")) {
			host = h
			if n, err := strconv.Atoi(s[i+1:]); err == nil && n > 0 && n <= 65535 {
				port = n
			}
		}
	}
	if len(host) >= 2 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	return host, port, host != ""
}

// InjectFields is Inject for a header kept as a list of fields (an HTTP/2
// relay's): del removes a field by its lower-case name, set sets one. The
// propagators' own fields are removed first, as Inject does. It does nothing
// when tracing is off.
func (p *Provider) InjectFields(ctx context.Context, del func(name string), set func(name, value string)) {
	if !p.Enabled() {
		return
	}
	for _, k := range p.owned {
		del(strings.ToLower(k))
	}
	h := make(http.Header, 2)
	p.prop.Inject(ctx, headerCarrier(h))
	for k, v := range h {
		if len(v) > 0 {
			set(strings.ToLower(k), v[0])
		}
	}
}
