package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/http1"
	"github.com/sidemesh/sidemesh/sidecar/http1client"
)

// Errors the request path answers with (mapped to responses by localReply).
var (
	ErrNoHealthyUpstream = errors.New("sidecar: no healthy upstream")
	ErrUnknownUpstream   = errors.New("sidecar: unknown upstream")
)

// failKind classifies why an attempt produced no response.
type failKind uint8

const (
	failNone failKind = iota
	failConnect
	failReset
	failRefusedStream
	failTimeout    // per-try or overall timeout
	failOverflow   // circuit breaker
	failNoHealthy  // no eligible endpoint
	failCanceled   // the client went away
	failUnknown    // no upstream by that name or destination (transparent listener)
	failProtocol   // the upstream's response was malformed (502)
	failStreamIdle // the client's request body stalled (408)
	failBadBody    // the client's request body broke its framing (400)
)

// upstreamError is what the cluster transport returns when it has no
// response to give; writeLocalReply maps it to the contract's answers.
type upstreamError struct {
	kind failKind
	host string
	err  error
}

func (e *upstreamError) Error() string {
	if e.host != "" {
		return fmt.Sprintf("%s: %s: %v", e.kind, e.host, e.err)
	}
	return fmt.Sprintf("%s: %v", e.kind, e.err)
}

func (e *upstreamError) Unwrap() error { return e.err }

func (k failKind) String() string {
	switch k {
	case failConnect:
		return "connection failure"
	case failReset:
		return "connection reset"
	case failRefusedStream:
		return "refused stream"
	case failTimeout:
		return "timeout"
	case failOverflow:
		return "overflow"
	case failNoHealthy:
		return "no healthy upstream"
	case failCanceled:
		return "downstream canceled"
	case failUnknown:
		return "unknown upstream"
	case failProtocol:
		return "protocol error"
	case failStreamIdle:
		return "stream idle timeout"
	case failBadBody:
		return "bad request body"
	}
	return "ok"
}

// classify turns a transport error into a failKind.
func classify(err error, ctx context.Context) failKind {
	if errors.Is(err, breaker.ErrOverflow) {
		return failOverflow
	}
	if ctx.Err() == context.Canceled {
		return failCanceled
	}
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded {
		return failTimeout
	}
	var pe *http1client.ProtocolError
	if errors.As(err, &pe) {
		return failProtocol
	}
	if errors.Is(err, errStreamIdle) {
		return failStreamIdle
	}
	var he *http1.Error
	if errors.As(err, &he) {
		return failBadBody
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return failConnect
	}
	if strings.Contains(err.Error(), "REFUSED_STREAM") {
		return failRefusedStream
	}
	return failReset
}

// writeLocalReply is the one place that maps sidecar errors to the HTTP
// answers the sidecar makes itself (the README lists them):
// every one carries x-sidemesh-local-reply: true, and a breaker overflow
// x-sidemesh-overloaded: true as well.
func writeLocalReply(w http.ResponseWriter, r *http.Request, err error) {
	code, body := localReply(err)
	if code == 0 {
		return // client gone: nobody to answer
	}
	h := w.Header()
	if errors.Is(err, breaker.ErrOverflow) {
		h.Set("x-sidemesh-overloaded", "true")
	}
	h.Set("Content-Type", "text/plain")
	h.Set("x-sidemesh-local-reply", "true")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}

// localReply is the status and body for err; status 0 means no answer.
func localReply(err error) (int, string) {
	var ad *authzDenied
	if errors.As(err, &ad) {
		return http.StatusForbidden, ad.Error() + "\n"
	}
	var ue *upstreamError
	if !errors.As(err, &ue) {
		if errors.Is(err, context.DeadlineExceeded) {
			return http.StatusGatewayTimeout, "upstream request timeout"
		}
		if errors.Is(err, context.Canceled) {
			return 0, ""
		}
		if errors.Is(err, ErrNoHealthyUpstream) {
			return http.StatusServiceUnavailable, "no healthy upstream"
		}
		return http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: " + err.Error()
	}
	switch ue.kind {
	case failNoHealthy:
		return http.StatusServiceUnavailable, "no healthy upstream"
	case failUnknown:
		return http.StatusNotFound, "unknown upstream " + ue.host + "\n"
	case failOverflow:
		var ov breaker.Overflow
		if errors.As(ue.err, &ov) {
			return http.StatusServiceUnavailable, fmt.Sprintf("upstream overloaded: circuit breaker threshold %s (%d) overflowed", ov.Threshold, ov.Limit)
		}
		return http.StatusServiceUnavailable, "upstream overloaded: " + ue.err.Error()
	case failTimeout:
		return http.StatusGatewayTimeout, "upstream request timeout"
	case failCanceled:
		return 0, ""
	case failConnect:
		return http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
	case failRefusedStream:
		return http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset"
	case failProtocol:
		return http.StatusBadGateway, "upstream connect error or disconnect/reset before headers. reset reason: protocol error"
	case failStreamIdle:
		return http.StatusRequestTimeout, "stream timeout"
	case failBadBody:
		var he *http1.Error
		if errors.As(ue.err, &he) {
			return http.StatusBadRequest, he.Reason + "\n"
		}
		return http.StatusBadRequest, "bad request body\n"
	}
	return http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
}
