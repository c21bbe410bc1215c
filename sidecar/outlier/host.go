package outlier

import (
	"sync/atomic"
	"time"
)

// Host is the outlier state of one endpoint address.
//
// Concurrency: Record, Ejected, Ejections, EjectedUntil and Address are
// safe for concurrent use and take no lock, except that the Record that
// completes a consecutive-error streak takes the detector's mutex to eject.
// Record allocates nothing.
type Host struct {
	addr string
	d    *Detector

	// Request path.
	ejected      atomic.Bool
	consecutive  [ConsecutiveLocalOriginFailure + 1]atomic.Uint32 // streaks, by EjectionType
	current      [2]atomic.Pointer[bucket]                        // by origin; swapped each interval
	ejections    atomic.Uint64
	ejectedUntil atomic.Int64 // Unix ns; 0 when not ejected

	// Guarded by d.mu.
	removed        bool
	spare          [2]*bucket // the buckets the next rotation swaps in
	last           [2]counts  // the last complete interval, by origin
	successRate    [2]float64 // -1 when below the request volumes
	backoff        uint32     // the ejection-time multiplier
	lastEjection   time.Time
	lastUnejection time.Time // zero until the first un-ejection
	jitter         time.Duration
}

// Address is the host's address.
func (h *Host) Address() string { return h.addr }

// Ejected reports whether the host is ejected.
func (h *Host) Ejected() bool { return h.ejected.Load() }

// Ejections is the number of times the host has been ejected.
func (h *Host) Ejections() uint64 { return h.ejections.Load() }

// EjectedUntil is when the host's ejection time ends, or the zero time when
// it is not ejected. The host returns to service on the detector's first
// interval tick from then (or earlier through Detector.Uneject).
func (h *Host) EjectedUntil() time.Time {
	if ns := h.ejectedUntil.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// Record counts the result of one request or connection attempt; see
// Result for how each result counts. Results keep counting while the host
// is ejected (requests already under way).
func (h *Host) Record(r Result) {
	split := h.d.p.split
	switch r {
	case ConnectSuccess:
		if split {
			h.localSuccess()
		}
	case ConnectSuccessFinal:
		if split {
			h.localSuccess()
		} else {
			h.status(200)
		}
	case ConnectFailed, Reset:
		if split {
			h.localFailure()
		} else {
			h.status(503)
		}
	case Timeout:
		if split {
			h.localFailure()
		} else {
			h.status(504)
		}
	default:
		h.status(uint32(r))
	}
}

// status is Envoy's putHttpResponseCode.
func (h *Host) status(code uint32) {
	b := h.current[external].Load()
	if code < 500 || code > 599 {
		b.add(true)
		h.endStreak(Consecutive5xx)
		h.endStreak(ConsecutiveGatewayFailure)
		return
	}
	b.add(false)
	if code >= 502 && code <= 504 {
		h.extendStreak(ConsecutiveGatewayFailure)
	} else {
		h.endStreak(ConsecutiveGatewayFailure)
	}
	h.extendStreak(Consecutive5xx)
}

func (h *Host) localSuccess() {
	h.current[local].Load().add(true)
	h.endStreak(ConsecutiveLocalOriginFailure)
}

func (h *Host) localFailure() {
	h.current[local].Load().add(false)
	h.extendStreak(ConsecutiveLocalOriginFailure)
}

// extendStreak counts one more consecutive error of type t and ejects when
// the streak reaches the threshold exactly (so a streak triggers once,
// until it is reset).
func (h *Host) extendStreak(t EjectionType) {
	n := h.consecutive[t].Add(1)
	if th := h.d.p.consecutive[t]; th != 0 && n == th {
		h.d.onConsecutive(h, t)
	}
}

// endStreak resets a streak, skipping the store (and the cache-line
// invalidation it costs other cores) when it is already 0.
func (h *Host) endStreak(t EjectionType) {
	if h.consecutive[t].Load() != 0 {
		h.consecutive[t].Store(0)
	}
}

// ejectionTime is how long the current ejection lasts: base × multiplier,
// capped at max_ejection_time, plus this ejection's jitter. Guarded by d.mu.
func (h *Host) ejectionTime(p *params) time.Duration {
	return min(time.Duration(h.backoff)*p.base, p.maxEject) + h.jitter
}

// rotate swaps a fresh bucket in for origin o and returns what the old one
// counted. Guarded by d.mu. A Record that loaded the old bucket just before
// the swap may land in it after it was read; it is lost, as in grpc-go's
// detector, which is a bounded inaccuracy of a few requests per interval.
func (h *Host) rotate(o origin) counts {
	fresh := h.spare[o]
	fresh.n.Store(0)
	old := h.current[o].Swap(fresh)
	h.spare[o] = old
	return old.counts()
}

// bucket counts one interval's requests in a single word, so that Record
// needs one atomic add: the total in the high 32 bits, the successes in the
// low 32 (good for 4·10⁹ requests per host per interval).
type bucket struct {
	n atomic.Uint64
}

type counts struct {
	total, success uint64
}

func (b *bucket) add(success bool) {
	if success {
		b.n.Add(1<<32 | 1)
	} else {
		b.n.Add(1 << 32)
	}
}

func (b *bucket) counts() counts {
	v := b.n.Load()
	return counts{total: v >> 32, success: v & (1<<32 - 1)}
}
