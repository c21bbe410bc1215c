package consul

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
)

// newInMemory returns a source whose requests h serves in memory (for
// synctest bubbles); the caller closes it.
func newInMemory(t *testing.T, h http.Handler, wait time.Duration, opts Options) *Source {
	t.Helper()
	opts.Transport = handlerTransport{h}
	src, err := New(Config{Address: "consul.test:8500", WaitTime: wait}, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return src
}

// addrs renders a snapshot's endpoints as "addr/weight/health" strings.
func addrs(s *discovery.Snapshot) []string {
	if s == nil {
		return nil
	}
	out := make([]string, 0, len(s.Endpoints))
	for _, ep := range s.Endpoints {
		out = append(out, fmt.Sprintf("%s/%d/%s", ep.Address, ep.Weight, ep.Health))
	}
	return out
}

func TestSourceIndexHandling(t *testing.T) {
	synctest.Test(t, testSourceIndexHandling)
}

func testSourceIndexHandling(t *testing.T) {
	a := entry("a", "127.0.0.1", 7001, 1, 1)
	b := entry("b", "127.0.0.1", 7002, 2, 1)
	h := newScripted(sequence(
		reply{index: 10, entries: []*api.ServiceEntry{a}},    // first read
		reply{index: 10, entries: []*api.ServiceEntry{a}},    // timeout: same index, same data
		reply{index: 12, entries: []*api.ServiceEntry{a, b}}, // a change
		reply{index: 5, entries: []*api.ServiceEntry{a, b}},  // index went backwards
		reply{index: 0, entries: []*api.ServiceEntry{a, b}},  // Consul's index-0 bug
		reply{index: 20, entries: []*api.ServiceEntry{b}},    // a change
		reply{hang: true},
	))
	src := newInMemory(t, h, 2*time.Second, Options{MinQueryInterval: time.Millisecond})
	defer src.Close()
	rec := &recorder{}
	cancel := src.Watch("api", rec)
	defer cancel()
	// Six answers a millisecond apart, then the seventh query hangs.
	time.Sleep(time.Second)
	synctest.Wait()

	var gotIndex []string
	for _, q := range h.queries() {
		gotIndex = append(gotIndex, q.index)
		if q.path != "/v1/health/service/api" || !q.stale {
			t.Errorf("query %+v: want /v1/health/service/api with stale", q)
		}
		if want := map[bool]string{true: "", false: "2000ms"}[q.index == ""]; q.index != "" && q.wait != want {
			t.Errorf("query with index %s has wait %q, want %q", q.index, q.wait, want)
		}
	}
	wantIndex := []string{"", "10", "10", "12", "", "1", "20"}
	if !reflect.DeepEqual(gotIndex, wantIndex) {
		t.Errorf("index of each query = %q, want %q", gotIndex, wantIndex)
	}

	updates, ambient, resource := rec.state()
	var versions []uint64
	for _, u := range updates {
		versions = append(versions, u.Version)
	}
	if want := []uint64{1, 1, 2, 2, 2, 3}; !reflect.DeepEqual(versions, want) {
		t.Errorf("versions delivered = %v, want %v (a version per change, re-confirmed otherwise)", versions, want)
	}
	if updates[0] != updates[1] {
		t.Error("an unchanged answer published a new snapshot instead of re-confirming the old one")
	}
	if got, want := addrs(updates[len(updates)-1]), []string{"127.0.0.1:7002/2/healthy"}; !reflect.DeepEqual(got, want) {
		t.Errorf("last endpoints = %v, want %v", got, want)
	}
	if len(ambient)+len(resource) != 0 {
		t.Errorf("errors on a healthy Consul: ambient %v, resource %v", ambient, resource)
	}
	st, ok := src.ServiceStats("api")
	if !ok || st.Index != 20 || st.Version != 3 || st.Endpoints != 1 || st.QueriesTotal != 6 || st.FailuresTotal != 0 || st.LastSuccess.IsZero() {
		t.Errorf("stats = %+v", st)
	}
}

func TestSourceOutageKeepsEndpoints(t *testing.T) {
	synctest.Test(t, testSourceOutageKeepsEndpoints)
}

func testSourceOutageKeepsEndpoints(t *testing.T) {
	a := entry("a", "127.0.0.1", 7001, 1, 1)
	b := entry("b", "127.0.0.1", 7002, 3, 1)
	h := newScripted(sequence(
		reply{index: 100, entries: []*api.ServiceEntry{a, b}},
		reply{status: http.StatusInternalServerError},
	))
	src := newInMemory(t, h, 2*time.Second, Options{MinQueryInterval: time.Millisecond, BaseBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	defer src.Close()
	rec := &recorder{}
	defer src.Watch("api", rec)()

	// Retries at most MaxBackoff apart: at least 3 failures in 100ms.
	time.Sleep(100 * time.Millisecond)
	synctest.Wait()
	updates, ambient, resource := rec.state()
	if len(ambient) < 3 {
		t.Fatalf("%d ambient errors 100ms into the outage, want at least 3", len(ambient))
	}
	if len(updates) != 1 || len(resource) != 0 {
		t.Fatalf("during the outage: %d updates, resource errors %v; want the one snapshot kept", len(updates), resource)
	}
	for _, err := range ambient {
		if !errors.Is(err, discovery.ErrUnavailable) || !strings.Contains(err.Error(), "500") {
			t.Errorf("ambient error %v: want ErrUnavailable naming the 500", err)
		}
	}
	if got := src.Last("api"); got != updates[0] {
		t.Errorf("last snapshot replaced during the outage: %v", addrs(got))
	}
	st, _ := src.ServiceStats("api")
	if st.ConsecutiveFailures < 3 || st.FailuresTotal < 3 || st.LastError == nil || st.Version != 1 || !st.LastErrorTime.After(st.LastSuccess) {
		t.Errorf("stats during the outage = %+v", st)
	}

	// Consul comes back as a new agent (a lower index) where a is gone.
	h.set(sequence(reply{index: 3, entries: []*api.ServiceEntry{b}}, reply{hang: true}))
	time.Sleep(100 * time.Millisecond) // past the next retry
	synctest.Wait()
	if got := addrs(rec.last()); !reflect.DeepEqual(got, []string{"127.0.0.1:7002/3/healthy"}) {
		t.Fatalf("endpoints %v after Consul came back, want the change made during the outage", got)
	}
	qs := h.queries()
	for i := 2; i < len(qs)-1; i++ {
		// Query 1 blocked on index 100 and failed; every later one but the
		// last followed a failure: none may block on the old index.
		if qs[i].index != "" {
			t.Errorf("query %d after a failure waits on index %q; want a fresh read", i, qs[i].index)
		}
	}
	if last := qs[len(qs)-1]; last.index != "3" {
		t.Errorf("after recovery the query waits on index %q, want 3", last.index)
	}
	st, _ = src.ServiceStats("api")
	if st.ConsecutiveFailures != 0 || st.Version != 2 || st.Index != 3 {
		t.Errorf("stats after recovery = %+v", st)
	}
}

func TestSourceHangingConsul(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newScripted(sequence(
			reply{index: 10, entries: []*api.ServiceEntry{entry("a", "127.0.0.1", 7001, 1, 1)}},
			reply{hang: true},
		))
		const wait, slack = time.Minute, 10 * time.Second
		src := newInMemory(t, h, wait, Options{RequestTimeout: slack})
		defer src.Close()
		rec := &recorder{}
		start := time.Now()
		defer src.Watch("api", rec)()

		time.Sleep(wait + wait/16 + slack + time.Second)
		synctest.Wait()
		updates, ambient, _ := rec.state()
		if len(updates) != 1 || len(ambient) != 1 {
			t.Fatalf("after the deadline: %d updates, %d ambient errors; want 1 and 1", len(updates), len(ambient))
		}
		if !errors.Is(ambient[0], discovery.ErrUnavailable) {
			t.Errorf("ambient error %v: want ErrUnavailable", ambient[0])
		}
		// The hanging query starts MinQueryInterval after the first (which
		// answered at once) and is cut at wait + wait/16 + RequestTimeout.
		if got, want := rec.ambientAt[0].Sub(start), DefaultMinQueryInterval+wait+wait/16+slack; got != want {
			t.Errorf("hang detected after %v, want %v", got, want)
		}
		st, _ := src.ServiceStats("api")
		if got := st.Stale(time.Now()); got < wait+wait/16+slack {
			t.Errorf("staleness %v, want at least the hang", got)
		}
		if src.Last("api") != updates[0] {
			t.Error("the last endpoints were dropped")
		}
	})
}

func TestSourceNoTightLoop(t *testing.T) {
	a := []*api.ServiceEntry{entry("a", "127.0.0.1", 7001, 1, 1)}
	tests := []struct {
		name  string
		reply func(n int) reply
	}{
		{"unchanged index answered at once", sequence(reply{index: 7, entries: a})},
		{"index always 0", sequence(reply{index: 0, entries: a})},
		{"index going backwards every time", func(n int) reply { return reply{index: uint64(100 - n%2*90), entries: a} }},
		{"errors", sequence(reply{index: 7, entries: a}, reply{status: http.StatusServiceUnavailable})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newScripted(tt.reply)
				// Zero backoff: only the query spacing stands between a
				// misbehaving Consul and a spin.
				src := newInMemory(t, h, time.Minute, Options{MinQueryInterval: 100 * time.Millisecond})
				src.bo.int64n = func(int64) int64 { return 0 }
				defer src.Close()
				defer src.Watch("api", &recorder{})()
				time.Sleep(10 * time.Second)
				synctest.Wait()
				qs := h.queries()
				// One query at t=0 and one every 100ms after: 101 by t=10s.
				if len(qs) != 101 {
					t.Errorf("%d queries in 10s, want 101 (one per 100ms)", len(qs))
				}
				for i := 1; i < len(qs); i++ {
					if gap := qs[i].at.Sub(qs[i-1].at); gap < 100*time.Millisecond {
						t.Fatalf("queries %d and %d %v apart, want >= 100ms", i-1, i, gap)
					}
				}
			})
		})
	}
}

func TestSourceBackoffWithJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newScripted(sequence(reply{status: http.StatusInternalServerError}))
		const base, max, spacing = 100 * time.Millisecond, time.Second, 10 * time.Millisecond
		src := newInMemory(t, h, time.Minute, Options{MinQueryInterval: spacing, BaseBackoff: base, MaxBackoff: max})
		src.bo.int64n = rand.New(rand.NewPCG(7, 7)).Int64N
		defer src.Close()
		rec := &recorder{}
		defer src.Watch("api", rec)()
		time.Sleep(5 * time.Minute)
		synctest.Wait()

		qs := h.queries()
		var sum time.Duration
		n := 0
		for i := 1; i < len(qs); i++ {
			gap := qs[i].at.Sub(qs[i-1].at)
			ceil := min(max, base<<min(i-1, 20))
			if gap < spacing || gap > ceil {
				t.Fatalf("gap before query %d = %v, want in [%v, %v]", i, gap, spacing, ceil)
			}
			if i > 5 { // ceiling reached: uniform on [0, 1s], floored at 10ms
				sum += gap
				n++
			}
		}
		// ~600 samples; the mean of uniform [0,1s] is 500ms (plus ~0.05ms
		// from the 10ms floor), its standard error ~12ms: allow 5 of them.
		if n < 300 {
			t.Fatalf("only %d retries in 5 minutes", n)
		}
		if mean := sum / time.Duration(n); mean < 440*time.Millisecond || mean > 560*time.Millisecond {
			t.Errorf("mean retry gap %v over %d retries, want 500ms ± 60ms", mean, n)
		}
		if _, amb, _ := rec.state(); len(amb) != len(qs) {
			t.Errorf("%d ambient errors for %d failed queries", len(amb), len(qs))
		}
		st, _ := src.ServiceStats("api")
		if st.FailuresTotal != uint64(len(qs)) || st.ConsecutiveFailures != len(qs) || !st.LastSuccess.IsZero() {
			t.Errorf("stats = %+v", st)
		}
	})
}

func TestSourceSharesOneQueryPerService(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newScripted(sequence(reply{index: 10, entries: []*api.ServiceEntry{entry("a", "127.0.0.1", 7001, 1, 1)}}, reply{hang: true}))
		src := newInMemory(t, h, time.Minute, Options{})
		defer src.Close()
		recs := make([]*recorder, 5)
		for i := range recs {
			recs[i] = &recorder{}
			defer src.Watch("api", recs[i])()
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if n := len(h.queries()); n != 2 {
			t.Errorf("%d queries for 5 watchers of one service, want 2 (the read, then one blocking query)", n)
		}
		for i, r := range recs {
			if r.last() == nil {
				t.Errorf("watcher %d got no snapshot", i)
			}
		}
		if got := src.Stats(); len(got) != 1 || got[0].Service != "api" {
			t.Errorf("Stats() = %+v", got)
		}
	})
}

func TestSourceWatchAfterClose(t *testing.T) {
	src, err := New(Config{Address: "127.0.0.1:1"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = src.Close()
	rec := &recorder{}
	defer src.Watch("api", rec)()
	if _, _, res := rec.state(); len(res) != 1 || !errors.Is(res[0], discovery.ErrSourceClosed) {
		t.Fatalf("watch after close: resource errors %v, want ErrSourceClosed", res)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	_, err := New(Config{Address: "no-port"}, Options{})
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "discovery.consul.address") {
		t.Fatalf("New = %v, want ErrConfig naming discovery.consul.address", err)
	}
}
