package sidecar

import (
	"fmt"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/http1"
)

// LimitsConfig is `limits`: what one downstream connection may ask of the
// sidecar. The defaults are Envoy's edge best-practice values (Envoy's
// own defaults leave the two timeouts off and allow 2^31-1 HTTP/2
// streams); 0 turns a limit off.
type LimitsConfig struct {
	// MaxRequestHeadersKB bounds a request head (431 beyond it).
	MaxRequestHeadersKB *int `yaml:"max_request_headers_kb"`
	// MaxHeadersCount bounds a request's header fields (431 beyond it).
	MaxHeadersCount *int `yaml:"max_headers_count"`
	// RequestHeadersTimeout bounds the time from a request's first byte
	// to the end of its head; the connection is closed past it.
	RequestHeadersTimeout *time.Duration `yaml:"request_headers_timeout"`
	// StreamIdleTimeout bounds the time a request may go without a byte
	// in either direction while its body or response is relayed.
	StreamIdleTimeout *time.Duration `yaml:"stream_idle_timeout"`
	// MaxRequestsPerConnection closes a connection after that many
	// requests (Connection: close on the last response).
	MaxRequestsPerConnection *int `yaml:"max_requests_per_connection"`
	// MaxConcurrentStreams bounds the streams of one HTTP/2 connection.
	MaxConcurrentStreams *int `yaml:"max_concurrent_streams"`
}

// Defaults of `limits`.
const (
	DefaultMaxRequestHeadersKB   = 60
	DefaultMaxHeadersCount       = 100
	DefaultRequestHeadersTimeout = 10 * time.Second
	DefaultStreamIdleTimeout     = 5 * time.Minute
	DefaultMaxConcurrentStreams  = 100
)

func (l *LimitsConfig) setDefaults() {
	setInt := func(p **int, v int) {
		if *p == nil {
			*p = &v
		}
	}
	setDur := func(p **time.Duration, v time.Duration) {
		if *p == nil {
			*p = &v
		}
	}
	setInt(&l.MaxRequestHeadersKB, DefaultMaxRequestHeadersKB)
	setInt(&l.MaxHeadersCount, DefaultMaxHeadersCount)
	setDur(&l.RequestHeadersTimeout, DefaultRequestHeadersTimeout)
	setDur(&l.StreamIdleTimeout, DefaultStreamIdleTimeout)
	setInt(&l.MaxRequestsPerConnection, 0)
	setInt(&l.MaxConcurrentStreams, DefaultMaxConcurrentStreams)
}

func (l *LimitsConfig) validate() error {
	for _, v := range []struct {
		key string
		n   int
	}{
		{"max_request_headers_kb", *l.MaxRequestHeadersKB},
		{"max_headers_count", *l.MaxHeadersCount},
		{"max_requests_per_connection", *l.MaxRequestsPerConnection},
		{"max_concurrent_streams", *l.MaxConcurrentStreams},
	} {
		if v.n < 0 {
			return fmt.Errorf("%w: limits.%s: must be >= 0 (0 turns it off), got %d", ErrConfig, v.key, v.n)
		}
	}
	if *l.MaxRequestHeadersKB > 8192 {
		return fmt.Errorf("%w: limits.max_request_headers_kb: at most 8192 (8 MiB), got %d", ErrConfig, *l.MaxRequestHeadersKB)
	}
	for _, v := range []struct {
		key string
		d   time.Duration
	}{
		{"request_headers_timeout", *l.RequestHeadersTimeout},
		{"stream_idle_timeout", *l.StreamIdleTimeout},
	} {
		if v.d < 0 {
			return fmt.Errorf("%w: limits.%s: must be >= 0 (0 turns it off), got %s", ErrConfig, v.key, v.d)
		}
	}
	return nil
}

// head is the parser's view of the limits.
func (l *LimitsConfig) head() http1.Limits {
	return http1.Limits{MaxHeaderBytes: *l.MaxRequestHeadersKB << 10, MaxHeaders: *l.MaxHeadersCount}
}
