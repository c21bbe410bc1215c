package consul

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
)

// reply is one scripted answer of the health endpoint.
type reply struct {
	status  int // 0: 200
	index   uint64
	entries []*api.ServiceEntry
	hang    bool // hold the request until the client gives up
}

// seenQuery is what the scripted server saw of one request.
type seenQuery struct {
	at                time.Time
	path, index, wait string
	token             string // X-Consul-Token
	stale             bool
}

// scripted is a Consul stand-in: fn(n) answers the n-th request (from 0).
type scripted struct {
	mu   sync.Mutex
	fn   func(n int) reply
	seen []seenQuery
	base int // len(seen) when fn was set
}

// sequence answers with replies in order, then repeats the last.
func sequence(replies ...reply) func(int) reply {
	return func(n int) reply { return replies[min(n, len(replies)-1)] }
}

func newScripted(fn func(int) reply) *scripted { return &scripted{fn: fn} }

// set replaces the script; n restarts from 0.
func (s *scripted) set(fn func(int) reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fn, s.base = fn, len(s.seen)
}

func (s *scripted) queries() []seenQuery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seenQuery(nil), s.seen...)
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	_, stale := q["stale"]
	s.mu.Lock()
	n := len(s.seen) - s.base
	s.seen = append(s.seen, seenQuery{at: time.Now(), path: r.URL.Path, index: q.Get("index"), wait: q.Get("wait"),
		token: r.Header.Get("X-Consul-Token"), stale: stale})
	rep := s.fn(n)
	s.mu.Unlock()
	switch {
	case rep.hang:
		<-r.Context().Done()
		return
	case rep.status != 0 && rep.status != http.StatusOK:
		http.Error(w, "scripted failure", rep.status)
		return
	}
	w.Header().Set("X-Consul-Index", strconv.FormatUint(rep.index, 10))
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(rep.entries)
}

// handlerTransport serves requests in memory (no sockets), so a test can
// run inside a synctest bubble with virtual time.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, req)
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	return rec.Result(), nil
}

// recorder is a Watcher that keeps everything it is told.
type recorder struct {
	mu       sync.Mutex
	updates  []*discovery.Snapshot
	ambient  []error
	resource []error
	// ambientAt is when each ambient error arrived.
	ambientAt []time.Time
}

var _ discovery.Watcher = (*recorder)(nil)

func (r *recorder) OnUpdate(s *discovery.Snapshot) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.updates = append(r.updates, s)
}

func (r *recorder) OnResourceError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resource = append(r.resource, err)
}

func (r *recorder) OnAmbientError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ambient = append(r.ambient, err)
	r.ambientAt = append(r.ambientAt, time.Now())
}

// state returns copies of what the watcher was told.
func (r *recorder) state() (updates []*discovery.Snapshot, ambient, resource []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*discovery.Snapshot(nil), r.updates...), append([]error(nil), r.ambient...), append([]error(nil), r.resource...)
}

func (r *recorder) last() *discovery.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.updates) == 0 {
		return nil
	}
	return r.updates[len(r.updates)-1]
}
