package xds

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidemesh/sidemesh/discovery"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeSource is a discovery source the test publishes into.
type fakeSource struct{ discovery.Fanout }

func (*fakeSource) Close() error { return nil }

// recorder is a discovery.Watcher that keeps what it was told.
type recorder struct {
	mu      sync.Mutex
	last    *discovery.Snapshot
	updates int
	resErr  error
	ambErr  error
	ambient int
}

func (r *recorder) OnUpdate(s *discovery.Snapshot) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last, r.resErr = s, nil
	r.updates++
}

func (r *recorder) OnResourceError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last, r.resErr = nil, err
}

func (r *recorder) OnAmbientError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ambErr = err
	r.ambient++
}

func (r *recorder) snapshot() *discovery.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// weights renders a snapshot as address→weight.
func weights(s *discovery.Snapshot) map[string]uint32 {
	if s == nil {
		return nil
	}
	m := map[string]uint32{}
	for _, ep := range s.Endpoints {
		m[ep.Address] = ep.Weight
	}
	return m
}

func sameWeights(s *discovery.Snapshot, want map[string]uint32) bool {
	got := weights(s)
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

// serve starts srv on lis and returns a func that stops it and waits for
// Serve to return.
func serve(t *testing.T, srv *Server, lis net.Listener) (stop func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			srv.Stop()
			if err := <-errc; err != nil && !errors.Is(err, ErrClosed) {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func newClient(t *testing.T, addr string) *Client {
	t.Helper()
	c, err := NewClient(ClientConfig{Address: AddressList{addr}, NodeID: "node-1", Cluster: "web"},
		ClientOptions{BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
