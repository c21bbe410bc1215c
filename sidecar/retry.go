package sidecar

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/sidemesh/sidemesh/upstream"
)

// retry_on conditions as bits (the one table is upstream's).
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

// retryPolicy is an upstream's retry_policy, parsed once: which failures
// and answers are retried, how often, and how long to wait in between
// (Envoy's router retry policy).
type retryPolicy struct {
	retryOn       uint32
	numRetries    int
	perTry        time.Duration
	backoffBase   time.Duration
	backoffMax    time.Duration
	maxBuffer     int64
	retriableCode map[int]bool
}

func newRetryPolicy(rp upstream.RetryPolicy) retryPolicy {
	p := retryPolicy{
		retryOn:       parseRetryOn(rp.RetryOn),
		numRetries:    *rp.NumRetries,
		perTry:        rp.PerTryTimeout,
		backoffBase:   rp.RetryBackOff.BaseInterval,
		backoffMax:    rp.RetryBackOff.MaxInterval,
		maxBuffer:     rp.MaxBufferBytes,
		retriableCode: map[int]bool{},
	}
	for _, code := range rp.RetriableStatusCodes {
		p.retriableCode[code] = true
	}
	return p
}

// connectRetries is how often a TCP connection may be retried on another
// endpoint: TCP can only retry connect failures.
func (p *retryPolicy) connectRetries() int {
	if p.retriableFailure(failConnect) {
		return p.numRetries
	}
	return 0
}

// retriableFailure reports whether retry_on covers an attempt that got no
// response for reason k.
func (p *retryPolicy) retriableFailure(k failKind) bool {
	switch k {
	case failConnect:
		return p.retryOn&(roConnectFailure|ro5xx|roGatewayError) != 0
	case failRefusedStream:
		return p.retryOn&(roRefusedStream|ro5xx) != 0
	case failReset:
		return p.retryOn&(roReset|ro5xx|roGatewayError) != 0
	case failTimeout:
		return p.retryOn&(ro5xx|roGatewayError) != 0
	}
	return false
}

// retriableResponse reports whether retry_on covers the response.
func (p *retryPolicy) retriableResponse(resp *http.Response, isGRPC bool) bool {
	return p.retriableStatus(resp.StatusCode, resp.Header.Get("Grpc-Status"), isGRPC)
}

// retriableStatus is retriableResponse for a status code and the
// grpc-status of the response header ("" when none).
func (p *retryPolicy) retriableStatus(code int, grpcStatus string, isGRPC bool) bool {
	switch {
	case code >= 500 && p.retryOn&ro5xx != 0:
		return true
	case (code == 502 || code == 503 || code == 504) && p.retryOn&roGatewayError != 0:
		return true
	case code == 409 && p.retryOn&roRetriable4xx != 0:
		return true
	case p.retryOn&roRetriableStatus != 0 && p.retriableCode[code]:
		return true
	}
	if isGRPC && p.retryOn&(roGrpcCancelled|roGrpcDeadline|roGrpcUnavailable|roGrpcResourceExhausted|roGrpcInternal) != 0 {
		// Only a trailers-only response carries grpc-status in the headers.
		switch grpcStatus {
		case "1":
			return p.retryOn&roGrpcCancelled != 0
		case "4":
			return p.retryOn&roGrpcDeadline != 0
		case "8":
			return p.retryOn&roGrpcResourceExhausted != 0
		case "13":
			return p.retryOn&roGrpcInternal != 0
		case "14":
			return p.retryOn&roGrpcUnavailable != 0
		}
	}
	return false
}

// sleepBackoff waits Envoy's exponential backoff with full jitter before
// retry number attempt: random in [0, min(max, base·2^(attempt-1))).
func (p *retryPolicy) sleepBackoff(ctx context.Context, attempt int) bool {
	base, max := p.backoffBase, p.backoffMax
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

// attemptValues are shared, read-only header values for the usual attempt
// counts (num_retries is at most 10), so setting the header allocates nothing.
var attemptValues = func() (v [12][]string) {
	for i := range v {
		v[i] = []string{strconv.Itoa(i)}
	}
	return v
}()

// attemptHeader is the x-sidemesh-attempt-count value for attempt n (from 1).
func attemptHeader(n int) []string {
	if n < len(attemptValues) {
		return attemptValues[n]
	}
	return []string{strconv.Itoa(n)}
}
