package measure

import (
	"math"
	"math/bits"
	"time"
)

// subBits sets the histogram's resolution: 2^subBits sub-buckets per power
// of two, so a reported quantile is within 1% of the recorded value.
const subBits = 7

// Hist is a log-linear latency histogram in nanoseconds. The zero value is
// empty and ready to use; it is not safe for concurrent use.
type Hist struct {
	counts [64 << subBits]uint64
	n      uint64
	max    int64
}

func bucketOf(v int64) int {
	if v < 1<<subBits {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - subBits // >= 1
	return e<<subBits | int(uint64(v)>>(e-1)&(1<<subBits-1))
}

// midOf is the midpoint of bucket b (the value a quantile reports).
func midOf(b int) float64 {
	if b < 1<<subBits {
		return float64(b)
	}
	e := b >> subBits
	m := b & (1<<subBits - 1)
	lo := (uint64(1<<subBits) | uint64(m)) << (e - 1)
	width := uint64(1) << (e - 1)
	return float64(lo) + float64(width)/2
}

// Record adds one sample; negative durations count as 0.
func (h *Hist) Record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	h.counts[bucketOf(v)]++
	h.n++
	if v > h.max {
		h.max = v
	}
}

// Merge adds o's samples to h.
func (h *Hist) Merge(o *Hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	if o.max > h.max {
		h.max = o.max
	}
}

// Count is the number of samples.
func (h *Hist) Count() uint64 { return h.n }

// MaxUs is the largest sample in microseconds (0 when empty).
func (h *Hist) MaxUs() float64 { return float64(h.max) / 1e3 }

// Quantile returns the q-quantile in microseconds, NaN when empty.
func (h *Hist) Quantile(q float64) float64 {
	if h.n == 0 {
		return math.NaN()
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			return math.Min(midOf(b), float64(h.max)) / 1e3
		}
	}
	return float64(h.max) / 1e3
}
