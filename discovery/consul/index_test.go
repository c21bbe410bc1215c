package consul

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestNextIndex(t *testing.T) {
	tests := []struct {
		name      string
		prev, got uint64
		want      uint64
	}{
		{"first read", 0, 42, 42},
		{"advanced", 42, 50, 50},
		{"unchanged (timeout or idempotent write)", 42, 42, 42},
		{"went backwards: reset to read at once", 42, 7, 0},
		{"went backwards to 0", 42, 0, 0},
		{"zero on a first read: block on 1, never 0", 0, 0, 1},
		{"zero after a reset", 0, 0, 1},
		{"one", 1, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nextIndex(tt.prev, tt.got); got != tt.want {
				t.Errorf("nextIndex(%d, %d) = %d, want %d", tt.prev, tt.got, got, tt.want)
			}
		})
	}
}

func TestBackoffCeiling(t *testing.T) {
	// int64n returning n-1 exposes the ceiling of the jitter range.
	top := backoff{base: 100 * time.Millisecond, max: time.Second, int64n: func(n int64) int64 { return n - 1 }}
	bottom := top
	bottom.int64n = func(int64) int64 { return 0 }
	tests := []struct {
		failures int
		want     time.Duration
	}{
		{0, 0},
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{4, 800 * time.Millisecond},
		{5, time.Second},
		{40, time.Second},  // shift beyond 32: capped, no overflow
		{100, time.Second}, // ditto
	}
	for _, tt := range tests {
		if got := top.delay(tt.failures); got != tt.want {
			t.Errorf("ceiling after %d failures = %v, want %v", tt.failures, got, tt.want)
		}
		if got := bottom.delay(tt.failures); got != 0 {
			t.Errorf("floor after %d failures = %v, want 0 (full jitter)", tt.failures, got)
		}
	}
}

func TestBackoffFullJitterSpread(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	b := backoff{base: 100 * time.Millisecond, max: 10 * time.Second, int64n: r.Int64N}
	const n = 4000
	var sum time.Duration
	for range n {
		d := b.delay(4) // range [0, 800ms]
		if d < 0 || d > 800*time.Millisecond {
			t.Fatalf("delay %v outside [0, 800ms]", d)
		}
		sum += d
	}
	// Uniform on [0, 800ms]: mean 400ms, standard error of the mean
	// 800/sqrt(12*4000) ≈ 3.7ms; 20ms is more than 5 standard errors.
	if mean := sum / n; mean < 380*time.Millisecond || mean > 420*time.Millisecond {
		t.Errorf("mean delay %v, want 400ms ± 20ms (uniform full jitter)", mean)
	}
}

func TestPace(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name    string
		now     time.Time
		last    time.Time
		retryAt time.Time
		min     time.Duration
		want    time.Duration
	}{
		{"first query", t0, time.Time{}, time.Time{}, 100 * time.Millisecond, 0},
		{"right after the previous start", t0, t0, time.Time{}, 100 * time.Millisecond, 100 * time.Millisecond},
		{"the previous query blocked long", t0.Add(time.Minute), t0, time.Time{}, 100 * time.Millisecond, 0},
		{"backoff longer than the spacing", t0, t0, t0.Add(2 * time.Second), 100 * time.Millisecond, 2 * time.Second},
		{"backoff shorter than the spacing", t0, t0, t0.Add(10 * time.Millisecond), 100 * time.Millisecond, 100 * time.Millisecond},
		{"backoff already over", t0.Add(3 * time.Second), t0, t0.Add(2 * time.Second), 100 * time.Millisecond, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pace(tt.now, tt.last, tt.retryAt, tt.min); got != tt.want {
				t.Errorf("pace = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestQueryTimeout(t *testing.T) {
	tests := []struct {
		index       uint64
		wait, slack time.Duration
		want        time.Duration
	}{
		{0, 5 * time.Minute, 10 * time.Second, 10 * time.Second},
		{1, 5 * time.Minute, 10 * time.Second, 5*time.Minute + 5*time.Minute/16 + 10*time.Second},
		{9, 160 * time.Millisecond, 100 * time.Millisecond, 270 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := queryTimeout(tt.index, tt.wait, tt.slack); got != tt.want {
			t.Errorf("queryTimeout(%d, %v, %v) = %v, want %v", tt.index, tt.wait, tt.slack, got, tt.want)
		}
	}
}
