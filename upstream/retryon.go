package upstream

import "strings"

// RetryOn is a set of retry conditions (Envoy's x-envoy-retry-on and
// x-envoy-retry-grpc-on names), one bit each.
type RetryOn uint32

// The retry conditions.
const (
	RetryOn5xx RetryOn = 1 << iota
	RetryOnGatewayError
	RetryOnReset
	RetryOnConnectFailure
	RetryOnRetriable4xx
	RetryOnRefusedStream
	RetryOnRetriableStatusCodes
	RetryOnCancelled
	RetryOnDeadlineExceeded
	RetryOnUnavailable
	RetryOnResourceExhausted
	RetryOnInternal
)

// retryOnTable is the one table of retry_on names, in documentation order.
var retryOnTable = [...]struct {
	name string
	bit  RetryOn
}{
	{"5xx", RetryOn5xx},
	{"gateway-error", RetryOnGatewayError},
	{"reset", RetryOnReset},
	{"connect-failure", RetryOnConnectFailure},
	{"retriable-4xx", RetryOnRetriable4xx},
	{"refused-stream", RetryOnRefusedStream},
	{"retriable-status-codes", RetryOnRetriableStatusCodes},
	{"cancelled", RetryOnCancelled},
	{"deadline-exceeded", RetryOnDeadlineExceeded},
	{"unavailable", RetryOnUnavailable},
	{"resource-exhausted", RetryOnResourceExhausted},
	{"internal", RetryOnInternal},
}

// ParseRetryOn returns the bit of one condition name.
func ParseRetryOn(name string) (RetryOn, bool) {
	for _, e := range retryOnTable {
		if e.name == name {
			return e.bit, true
		}
	}
	return 0, false
}

// RetryConditions parses a comma-separated retry_on value; unknown names
// (which Validate refuses) are ignored.
func RetryConditions(s string) RetryOn {
	var set RetryOn
	for _, on := range strings.Split(s, ",") {
		b, _ := ParseRetryOn(strings.TrimSpace(on))
		set |= b
	}
	return set
}

// RetryOnList lists every condition name for messages.
func RetryOnList() string {
	names := make([]string, len(retryOnTable))
	for i, e := range retryOnTable {
		names[i] = e.name
	}
	return strings.Join(names, ", ")
}
