package health

import (
	"fmt"
	"testing"
)

// BenchmarkHealthy measures the read a cluster makes per endpoint when it
// rebuilds its picker, with 100 hosts checked.
func BenchmarkHealthy(b *testing.B) {
	n := newFakeNet()
	cfg := testConfig()
	cfg.Interval = 1 << 62 // one check per host, then quiet
	c := newChecker(cfg, Options{Seed: 1}, n.prober)
	defer c.Close()
	addrs := make([]string, 100)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("198.18.0.%d:80", i)
	}
	c.SetHosts(addrs)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			c.Healthy(addrs[i%len(addrs)])
			i++
		}
	})
}
