package consul

import (
	"math/rand/v2"
	"time"
)

// Pacing of the blocking-query loop, after Consul's "Implementation
// details" for blocking queries
// (https://developer.hashicorp.com/consul/api-docs/features/blocking):
// reset the index if it goes backwards, never block on index 0, and rate
// limit the loop so that a misbehaving index cannot make it spin.
const (
	// DefaultMinQueryInterval spaces the starts of two queries for one
	// service: at most 10 queries a second however the index behaves.
	DefaultMinQueryInterval = 100 * time.Millisecond
	// DefaultBaseBackoff and DefaultMaxBackoff bound the wait after a failed
	// query: full jitter, uniform in [0, min(max, base·2^(n-1))] after the
	// n-th consecutive failure.
	DefaultBaseBackoff = 250 * time.Millisecond
	DefaultMaxBackoff  = 5 * time.Second
	// DefaultRequestTimeout bounds a non-blocking query, and is the slack a
	// blocking query gets beyond its wait (Consul adds up to wait/16).
	DefaultRequestTimeout = 10 * time.Second
)

// nextIndex returns the index for the next blocking query, given the index
// the last query waited on (prev) and the X-Consul-Index it returned (got).
//
//   - got < prev: the index went backwards (a snapshot restore, a new
//     agent): reset to 0, so the next query reads the current state at once.
//   - got == 0: a bug Consul documents; use 1, which always blocks safely,
//     instead of 0, which never blocks and would spin.
func nextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got == 0:
		return 1
	}
	return got
}

// queryTimeout is the client-side deadline of one query: a blocking query
// may be held for wait plus Consul's jitter of up to wait/16.
func queryTimeout(index uint64, wait, slack time.Duration) time.Duration {
	if index == 0 {
		return slack
	}
	return wait + wait/16 + slack
}

// backoff is exponential backoff with full jitter
// (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
type backoff struct {
	base, max time.Duration
	// int64n returns a uniform value in [0, n); nil means math/rand/v2.
	int64n func(n int64) int64
}

// delay is the wait after the failures-th consecutive failure (>= 1).
func (b backoff) delay(failures int) time.Duration {
	if failures < 1 {
		return 0
	}
	ceil := b.max
	if shift := failures - 1; shift < 32 && b.base<<shift < b.max && b.base<<shift > 0 {
		ceil = b.base << shift
	}
	if ceil <= 0 {
		return 0
	}
	n := b.int64n
	if n == nil {
		n = rand.Int64N
	}
	return time.Duration(n(int64(ceil) + 1))
}

// pace returns how long to wait before starting a query, so that it starts
// no sooner than min after the previous one started (at last) and no sooner
// than retryAt (after a failure's backoff).
func pace(now, last, retryAt time.Time, min time.Duration) time.Duration {
	start := last.Add(min)
	if retryAt.After(start) {
		start = retryAt
	}
	if d := start.Sub(now); d > 0 {
		return d
	}
	return 0
}
