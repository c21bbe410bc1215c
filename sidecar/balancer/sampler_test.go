package balancer

import (
	"encoding/binary"
	"math"
	"testing"
)

// aliasProbabilities reads the exact probability of each index back out of
// an alias table: column j keeps j with thresh_j/2^64 and gives the rest to
// alias_j.
func aliasProbabilities(s sampler) []float64 {
	n := int(s.n)
	p := make([]float64, n)
	if s.thresh == nil {
		for i := range p {
			p[i] = 1 / float64(n)
		}
		return p
	}
	for j := range n {
		keep := float64(s.thresh[j]) / math.Exp2(64)
		if s.thresh[j] == math.MaxUint64 {
			keep = 1
		}
		p[j] += keep / float64(n)
		p[s.alias[j]] += (1 - keep) / float64(n)
	}
	return p
}

func checkSampler(t *testing.T, weights []uint64) {
	t.Helper()
	s := newSampler(weights)
	var total float64
	for _, w := range weights {
		total += float64(w)
	}
	for i, got := range aliasProbabilities(s) {
		if want := float64(weights[i]) / total; math.Abs(got-want) > 1e-12 {
			t.Fatalf("weights %v: index %d has probability %v, want %v", weights, i, got, want)
		}
	}
}

func TestSamplerExact(t *testing.T) {
	for _, w := range [][]uint64{
		{1, 1},
		{1, 3, 6},
		{1, 1 << 32},
		{5, 5, 5, 1},
		{1 << 32, 1 << 32, 1},
		{7, 11, 13, 17, 19, 23, 29, 31, 37, 41},
	} {
		checkSampler(t, w)
	}
}

// FuzzSampler checks the alias table for arbitrary weights.
func FuzzSampler(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 3, 0, 0, 0, 6, 0, 0, 0})
	f.Add([]byte{255, 255, 255, 255, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var w []uint64
		for len(data) >= 4 && len(w) < 1000 {
			w = append(w, max(1, uint64(binary.LittleEndian.Uint32(data))))
			data = data[4:]
		}
		if len(w) < 2 {
			return
		}
		checkSampler(t, w)
	})
}

// FuzzRoundRobin checks that any weights give exact shares over a cycle.
func FuzzRoundRobin(f *testing.F) {
	f.Add([]byte{1, 3, 6}, uint64(1))
	f.Add([]byte{100, 1, 1, 1, 1}, uint64(2))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		if len(data) < 2 || len(data) > 200 {
			return
		}
		weights := make([]uint32, len(data))
		for i, b := range data {
			weights[i] = uint32(b) * uint32(b) // up to 65025, often scaled
		}
		p := mustNew(t, RoundRobin, Config{}, endpoints(weights...), seed, nil).(*roundRobinPicker)
		counts := countPicks(t, p, len(weights), int(p.n), noHash)
		n, want := cycleLen(weights)
		if n != int(p.n) {
			// Scaled (ΣW > MaxSchedule): shares within the documented limit.
			for i, c := range counts {
				w := float64(max(weights[i], 1))
				ideal := w / float64(sum32(weights)) * float64(p.n)
				if math.Abs(float64(c)-ideal) > math.Max(0.5, 1-ideal)+float64(len(weights)) {
					t.Fatalf("endpoint %d: %d picks per cycle of %d, ideal %.1f", i, c, p.n, ideal)
				}
			}
			return
		}
		for i, c := range counts {
			if uint64(c) != want[i] {
				t.Fatalf("counts %v, want %v", counts, want)
			}
		}
	})
}

func sum32(w []uint32) uint64 {
	var s uint64
	for _, x := range w {
		s += uint64(max(x, 1))
	}
	return s
}
