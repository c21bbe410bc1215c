package balancer

import (
	"strconv"
	"sync/atomic"
	"testing"
)

// BenchmarkPick measures Pick from parallel goroutines on the default random
// source, with unequal weights (1:3:6 for 3 endpoints, 1..10 for 100) and
// Active counters that other goroutines move. Hash policies get a hash per
// pick.
func BenchmarkPick(b *testing.B) {
	for _, policy := range Policies() {
		for _, n := range []int{3, 100} {
			b.Run(policy+"/"+strconv.Itoa(n), func(b *testing.B) {
				weights := make([]uint32, n)
				for i := range weights {
					weights[i] = uint32(i%10 + 1)
				}
				if n == 3 {
					weights = []uint32{1, 3, 6}
				}
				eps := endpoints(weights...)
				for i := range eps {
					eps[i].Active = new(atomic.Int64)
					eps[i].Active.Store(int64(i % 7))
				}
				p, err := New(policy, Config{}, eps, 1)
				if err != nil {
					b.Fatal(err)
				}
				var seq atomic.Uint64
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					info := PickInfo{Hash: splitmix64(seq.Add(1)), HasHash: true}
					sink := 0
					for pb.Next() {
						info.Hash += 0x9e3779b97f4a7c15
						sink += p.Pick(&info)
					}
					if sink < 0 {
						b.Error("negative pick")
					}
				})
			})
		}
	}
}

// BenchmarkNew measures a picker rebuild (done on every endpoint or weight
// change, off the request path).
func BenchmarkNew(b *testing.B) {
	for _, policy := range Policies() {
		for _, n := range []int{3, 100} {
			b.Run(policy+"/"+strconv.Itoa(n), func(b *testing.B) {
				weights := make([]uint32, n)
				for i := range weights {
					weights[i] = uint32(i%10 + 1)
				}
				eps := endpoints(weights...)
				b.ReportAllocs()
				for b.Loop() {
					if _, err := New(policy, Config{}, eps, 1); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
