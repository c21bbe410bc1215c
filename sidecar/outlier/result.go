package outlier

// Result is what one request, or one connection attempt, to a host came
// to. Values below 1000 are HTTP status codes (see Status and GRPCStatus);
// the named constants are the local-origin events of Envoy's
// Upstream::Outlier::Result.
//
// How each is counted depends on split_external_local_origin_errors,
// exactly as in Envoy (outlier_detection_impl.cc):
//
//	result               not split                   split
//	Status(5xx)          5xx (gateway if 502-504)    5xx (gateway if 502-504)
//	Status(other)        success                     success
//	ConnectSuccess       ignored                     local-origin success
//	ConnectSuccessFinal  success (as 200)            local-origin success
//	ConnectFailed, Reset 5xx gateway (as 503)        local-origin failure
//	Timeout              5xx gateway (as 504)        local-origin failure
//
// An HTTP proxy reports ConnectSuccess when a new connection is
// established and then the response status; a TCP proxy, which has no
// status, reports ConnectSuccessFinal instead.
type Result uint32

const (
	// ConnectSuccess: a connection to the host was established; the
	// request's outcome follows as a Status (LOCAL_ORIGIN_CONNECT_SUCCESS).
	ConnectSuccess Result = 1000 + iota
	// ConnectSuccessFinal: a connection was established and nothing more
	// will be reported, as for TCP (LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL).
	ConnectSuccessFinal
	// ConnectFailed: the connection could not be made (refused, unreachable,
	// connect timeout) (LOCAL_ORIGIN_CONNECT_FAILED).
	ConnectFailed
	// Reset: the connection was reset before a response. Envoy's router
	// reports resets as LOCAL_ORIGIN_CONNECT_FAILED; so do we.
	Reset
	// Timeout: the host did not answer in time (LOCAL_ORIGIN_TIMEOUT).
	Timeout
)

// Status is the Result of a response with this HTTP status code. Codes
// outside 0..999 count as 500.
func Status(code int) Result {
	if code < 0 || code > 999 {
		return 500
	}
	return Result(code)
}

// GRPCStatus is the Result of a gRPC response with this grpc-status, mapped
// to HTTP as Envoy's router does before reporting to outlier detection
// (Grpc::Utility::grpcToHttpStatus): UNAVAILABLE is 503, DEADLINE_EXCEEDED
// 504, UNKNOWN, INTERNAL and DATA_LOSS 500, UNIMPLEMENTED 501; the others
// are 4xx or 200 and count as successes.
func GRPCStatus(code uint32) Result {
	if int(code) < len(grpcToHTTP) {
		return Result(grpcToHTTP[code])
	}
	return 500
}

var grpcToHTTP = [...]uint16{
	0:  200, // OK
	1:  499, // CANCELLED
	2:  500, // UNKNOWN
	3:  400, // INVALID_ARGUMENT
	4:  504, // DEADLINE_EXCEEDED
	5:  404, // NOT_FOUND
	6:  409, // ALREADY_EXISTS
	7:  403, // PERMISSION_DENIED
	8:  429, // RESOURCE_EXHAUSTED
	9:  400, // FAILED_PRECONDITION
	10: 409, // ABORTED
	11: 400, // OUT_OF_RANGE
	12: 501, // UNIMPLEMENTED
	13: 500, // INTERNAL
	14: 503, // UNAVAILABLE
	15: 500, // DATA_LOSS
	16: 401, // UNAUTHENTICATED
}

// EjectionType is why a host was ejected (Envoy's OutlierEjectionType).
type EjectionType uint8

const (
	Consecutive5xx EjectionType = iota
	ConsecutiveGatewayFailure
	ConsecutiveLocalOriginFailure
	SuccessRate
	SuccessRateLocalOrigin
	FailurePercentage
	FailurePercentageLocalOrigin

	// NumEjectionTypes is the number of ejection types; they are
	// 0..NumEjectionTypes-1, for iterating Stats' per-type counters.
	NumEjectionTypes = iota
)

var ejectionTypeNames = [NumEjectionTypes]string{
	"consecutive_5xx",
	"consecutive_gateway_failure",
	"consecutive_local_origin_failure",
	"success_rate",
	"success_rate_local_origin",
	"failure_percentage",
	"failure_percentage_local_origin",
}

// String is the Envoy enum name in lower case, e.g. "consecutive_5xx".
func (t EjectionType) String() string {
	if int(t) < len(ejectionTypeNames) {
		return ejectionTypeNames[t]
	}
	return "unknown"
}
