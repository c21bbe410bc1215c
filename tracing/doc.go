// Package tracing owns sidemesh's OpenTelemetry tracing: the SDK set up from
// the `tracing` config block and the standard OTEL_* environment variables
// (Config, Setup), the propagators that carry trace context in and out of the
// proxy (W3C tracecontext and baggage, B3 single and multi header), and the
// span helpers the listeners call on the request path.
//
// Spans follow the OpenTelemetry semantic conventions v1.37.0 (HTTP, RPC,
// network) plus a few sidemesh attributes (sidemesh.upstream,
// sidemesh.lb_policy, sidemesh.outcome, sidemesh.bytes_*):
//
//   - inbound listener: one server span per request (StartServer … EndHTTP);
//   - upstream listener: one client span per attempt, the attempts of a
//     request being siblings under the app's span (Extract once, then
//     StartClient … SetEndpoint … Inject … EndHTTP per attempt);
//   - gRPC requests get rpc.* attributes and are ended with EndGRPC;
//   - TCP: one client span per connection (StartTCP … EndTCP) with the bytes
//     copied each way.
//
// Tracing never slows a request down: finished spans go into a bounded queue
// that one goroutine exports in batches; when the collector is slow or down,
// spans are dropped and counted (Provider.Stats), never waited for. A nil or
// disabled Provider costs a nil check per call and allocates nothing.
//
// Usage on the upstream (outbound) path:
//
//	ctx := p.Extract(r.Context(), r.Header)
//	for attempt := 0; ; attempt++ {
//		actx, span := p.StartClient(ctx, r, tracing.Upstream{Service: "api", LBPolicy: "round_robin"}, attempt)
//		tracing.SetEndpoint(span, endpoint.Address)
//		p.Inject(actx, outReq.Header)
//		...
//		tracing.EndHTTP(span, resp.StatusCode, tracing.OutcomeOK)
//	}
//
// Concurrency: Provider is safe for concurrent use; a span returned by a Start
// method belongs to the request that started it and is ended exactly once.
package tracing
