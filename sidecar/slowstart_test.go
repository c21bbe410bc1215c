package sidecar

import (
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/upstream"
)

// A new endpoint ramps in over slow_start_window: weight ·
// max(min_weight_percent, t/window) with aggression 1. The cluster's clock
// is synctest's, so the shares are exact whatever the machine's speed:
// round robin serves exact shares per cycle of the weights.
func TestSlowStartRamps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		u := &Upstream{Service: "api", Settings: upstream.Settings{
			LBPolicy:  "round_robin",
			SlowStart: &upstream.SlowStartConfig{Window: 3 * time.Second, Aggression: 1, MinWeightPercent: 10},
		}}
		u.SetDefaults()
		c := newCluster(u, newMetrics(), nil, slog.New(slog.DiscardHandler))
		defer c.close()
		update := func(version uint64, addrs ...string) {
			eps := make([]discovery.Endpoint, len(addrs))
			for i, a := range addrs {
				eps[i] = discovery.Endpoint{Address: a, Weight: 1}
			}
			snap, err := discovery.NewSnapshot("api", version, eps)
			if err != nil {
				t.Fatal(err)
			}
			c.onUpdate(snap)
		}
		// share of "fresh" over n picks
		share := func(n int) float64 {
			info := &balancer.PickInfo{}
			got := 0
			for range n {
				p, err := c.pick(info, nil)
				if err != nil {
					t.Fatal(err)
				}
				if p.Host.Addr == "198.18.0.2:80" {
					got++
				}
				p.Done(DoneInfo{Status: 200})
			}
			return float64(got) / float64(n)
		}
		update(1, "198.18.0.1:80") // initial hosts take full weight at once
		update(2, "198.18.0.1:80", "198.18.0.2:80")
		// At once: 100 against 10 (min_weight_percent), 1/11 of the picks.
		if got := share(1100); got < 0.08 || got > 0.10 {
			t.Errorf("share at the start of the window = %.3f, want 10/110", got)
		}
		// Half way: 100 against 50, 1/3 (the weights step every window/20).
		time.Sleep(1500 * time.Millisecond)
		synctest.Wait()
		if got := share(1500); got < 0.31 || got > 0.35 {
			t.Errorf("share half way through the window = %.3f, want 50/150", got)
		}
		// After the window: equal weights.
		time.Sleep(1600 * time.Millisecond)
		synctest.Wait()
		if got := share(1000); got != 0.5 {
			t.Errorf("share after the window = %.3f, want 0.5", got)
		}
	})
}
