package xds

import (
	"context"
	"encoding/binary"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	deltav3 "github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// The delta (incremental) xDS handler. go-control-plane's delta server
// runs two goroutines per stream (the handler and a receive loop) and its
// cache keeps, per stream and type, a map of every subscribed name and one
// of every version sent, and builds each response per stream (a fresh Any
// per resource per client). With a thousand mostly idle sidecars those
// were most of the control plane's memory and push CPU. This handler
// keeps the protocol and go-control-plane's semantics (and the same
// callbacks) with:
//
//   - one goroutine per stream: grpc's handler goroutine runs the receive
//     loop; a push is sent by a small pool of senders (deltaServer.pool),
//     or by the handler itself when a request asks for something;
//   - per type one immutable deltaSnapshot: each resource marshalled once
//     into a shared Resource (name, content version, Any), and the names
//     changed and removed since the previous snapshot, computed once;
//   - per stream and type (deltaSub): the wildcard flag, the subscribed
//     names as an interned sorted set shared by every stream subscribing
//     the same names, and the versions the client has as a pointer to the
//     snapshot it is in sync with; a map of its own only while it is not
//     (between a subscription change or initial_resource_versions and the
//     response that follows).

// versionNone marks, in a deltaSub's own versions, a name the client does
// not have (content versions are hex, so it is never a real version).
const versionNone = "\x00"

// deltaResource is one resource of a deltaSnapshot, shared by every
// response that carries it.
type deltaResource struct {
	version string
	pb      *discoveryv3.Resource
}

// deltaSnapshot is one type's resources as served to delta streams. It is
// immutable once published.
type deltaSnapshot struct {
	seq     uint64 // increases with every snapshot of the type
	version string // the type's content version (system_version_info)
	res     map[string]*deltaResource
	// changed (added or updated) and removed names since the snapshot
	// numbered prevSeq.
	prevSeq          uint64
	changed, removed []string
}

// newDeltaSnapshot marshals items once. Resources whose content is the
// same as in prev are shared with it. The per-resource version is
// go-control-plane's (hex SHA-256 of the deterministic encoding), so
// replicas, and servers of either implementation, agree.
func newDeltaSnapshot(typeURL, version string, items map[string]types.Resource, prev *deltaSnapshot) (*deltaSnapshot, error) {
	ds := &deltaSnapshot{version: version, res: make(map[string]*deltaResource, len(items)), seq: 1}
	if prev != nil {
		ds.seq, ds.prevSeq = prev.seq+1, prev.seq
	}
	for name, r := range items {
		b, err := cache.MarshalResource(r)
		if err != nil {
			return nil, err
		}
		v := cache.HashResource(b)
		if old, ok := prev.get(name); ok && old.version == v {
			ds.res[old.pb.Name] = old
			continue
		}
		name = unique.Make(name).Value()
		ds.res[name] = &deltaResource{version: v, pb: &discoveryv3.Resource{
			Name: name, Version: v, Resource: &anypb.Any{TypeUrl: typeURL, Value: b},
		}}
		ds.changed = append(ds.changed, name)
	}
	if prev != nil {
		for name := range prev.res {
			if _, ok := ds.res[name]; !ok {
				ds.removed = append(ds.removed, name)
			}
		}
	}
	slices.Sort(ds.changed)
	slices.Sort(ds.removed)
	return ds, nil
}

func (ds *deltaSnapshot) get(name string) (*deltaResource, bool) {
	if ds == nil {
		return nil, false
	}
	r, ok := ds.res[name]
	return r, ok
}

// nameSet is an immutable sorted set of interned resource names, shared
// by every subscription to the same names (nameSets).
type nameSet struct {
	names []string
	key   string
	refs  int
}

func (s *nameSet) has(name string) bool {
	if s == nil {
		return false
	}
	_, ok := slices.BinarySearch(s.names, name)
	return ok
}

func (s *nameSet) len() int {
	if s == nil {
		return 0
	}
	return len(s.names)
}

// nameSets interns name sets: a thousand clients subscribing the same
// services hold one set.
type nameSets struct {
	mu sync.Mutex
	m  map[string]*nameSet
}

// get returns the shared set of names (sorted, no duplicates) with one
// more reference; nil for no names.
func (t *nameSets) get(names []string) *nameSet {
	if len(names) == 0 {
		return nil
	}
	var kb []byte
	for _, n := range names {
		kb = binary.AppendUvarint(kb, uint64(len(n)))
		kb = append(kb, n...)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.m[string(kb)]; ok {
		s.refs++
		return s
	}
	s := &nameSet{names: make([]string, len(names)), key: string(kb), refs: 1}
	for i, n := range names {
		s.names[i] = unique.Make(n).Value()
	}
	if t.m == nil {
		t.m = map[string]*nameSet{}
	}
	t.m[s.key] = s
	return s
}

func (t *nameSets) release(s *nameSet) {
	if s == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if s.refs--; s.refs == 0 {
		delete(t.m, s.key)
	}
}

// deltaServer serves delta xDS streams from one deltaSnapshot per type.
type deltaServer struct {
	ctx context.Context
	cb  deltav3.Callbacks

	ids  atomic.Int64
	sets nameSets
	pool sendPool

	mu      sync.Mutex
	snaps   map[string]*deltaSnapshot
	streams map[*deltaStream]struct{}
}

// deltaStreamIDBase keeps delta stream ids apart from the state-of-the-world
// server's (which counts from 1) in the shared callbacks.
const deltaStreamIDBase = 1 << 32

func newDeltaServer(ctx context.Context, cb deltav3.Callbacks) *deltaServer {
	d := &deltaServer{ctx: ctx, cb: cb, snaps: map[string]*deltaSnapshot{}, streams: map[*deltaStream]struct{}{}}
	d.ids.Store(deltaStreamIDBase)
	d.pool.size = max(4, runtime.GOMAXPROCS(0))
	d.pool.stuckAfter = time.Second
	return d
}

// snapshot returns the type's current snapshot (nil: none).
func (d *deltaServer) snapshot(typeURL string) *deltaSnapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.snaps[typeURL]
}

// set publishes a type's new resources and pushes them to the streams
// subscribed to the type.
func (d *deltaServer) set(typeURL, version string, items map[string]types.Resource) error {
	d.mu.Lock()
	ds, err := newDeltaSnapshot(typeURL, version, items, d.snaps[typeURL])
	if err != nil {
		d.mu.Unlock()
		return err
	}
	d.snaps[typeURL] = ds
	streams := make([]*deltaStream, 0, len(d.streams))
	for s := range d.streams {
		streams = append(streams, s)
	}
	d.mu.Unlock()
	for _, s := range streams {
		if s.needs(typeURL, ds) {
			s.kick(&d.pool)
		}
	}
	return nil
}

// deltaSub is one stream's subscription to one type, with go-control-plane's
// semantics (stream.Subscription).
type deltaSub struct {
	typeURL  string
	wildcard bool
	// legacy: no name subscribed yet on a stream that started with an
	// empty subscribe (legacy wildcard); any name ends it.
	legacy bool
	names  *nameSet
	// The versions the client has: while own is nil, those of base for
	// every name of interest (wildcard: all of base); otherwise own
	// (versionNone: not had) — go-control-plane's returned resources.
	base *deltaSnapshot
	own  map[string]string
	// respond: answer the next evaluation even if empty (a wildcard
	// request without nonce, as go-control-plane does for Envoy's init).
	respond bool
}

func (s *deltaSub) interested(name string) bool { return s.wildcard || s.names.has(name) }

// materialize turns the versions the client has into own entries, so a
// subscription change can edit them.
func (s *deltaSub) materialize() {
	if s.own != nil || s.base == nil {
		if s.own == nil {
			s.own = map[string]string{}
		}
		s.base = nil
		return
	}
	s.own = make(map[string]string, s.names.len())
	if s.wildcard {
		for name, r := range s.base.res {
			s.own[name] = r.version
		}
	} else if s.names != nil {
		for _, name := range s.names.names {
			if r, ok := s.base.res[name]; ok {
				s.own[name] = r.version
			}
		}
	}
	s.base = nil
}

// update applies subscribe and unsubscribe as
// stream.Subscription.UpdateResourceSubscriptions does.
func (s *deltaSub) update(sets *nameSets, subscribe, unsubscribe []string) {
	if s.legacy {
		if len(subscribe) == 0 {
			return
		}
		s.legacy = false
	}
	if len(subscribe) == 0 && len(unsubscribe) == 0 {
		return
	}
	s.materialize()
	var names []string
	if s.names != nil {
		names = slices.Clone(s.names.names)
	}
	for _, n := range subscribe {
		if n == "*" {
			s.wildcard = true
			continue
		}
		names = append(names, n)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	for _, n := range unsubscribe {
		if n == "*" {
			s.wildcard = false
			continue
		}
		i, ok := slices.BinarySearch(names, n)
		if ok && s.wildcard {
			// Still of interest through the wildcard: the client must
			// be told whether it exists (sent again or removed).
			s.own[unique.Make(n).Value()] = ""
		} else {
			delete(s.own, n)
		}
		if ok {
			names = slices.Delete(names, i, i+1)
		}
	}
	old := s.names
	s.names = sets.get(names)
	sets.release(old)
}

// evaluate computes the response bringing the client to cur (nil: none),
// and records that the client has it.
func (s *deltaSub) evaluate(cur *deltaSnapshot) *discoveryv3.DeltaDiscoveryResponse {
	if cur == nil {
		return nil
	}
	respond := s.respond
	s.respond = false
	var send []*discoveryv3.Resource
	var removed []string
	switch {
	case s.own == nil && s.base == cur:
	case s.own == nil && s.base != nil && cur.prevSeq == s.base.seq:
		// In sync with the previous snapshot: only its diff matters.
		for _, n := range cur.changed {
			if s.interested(n) {
				send = append(send, cur.res[n].pb)
			}
		}
		for _, n := range cur.removed {
			if s.interested(n) {
				removed = append(removed, n)
			}
		}
	default:
		s.materialize()
		if s.wildcard {
			for name, r := range cur.res {
				if v, ok := s.own[name]; !ok || v != r.version {
					send = append(send, r.pb)
				}
			}
			for name, v := range s.own {
				if _, ok := cur.res[name]; !ok && v != versionNone {
					removed = append(removed, name)
				}
			}
		} else if s.names != nil {
			for _, name := range s.names.names {
				v, had := s.own[name]
				had = had && v != versionNone
				if r, ok := cur.res[name]; ok {
					if !had || v != r.version {
						send = append(send, r.pb)
					}
				} else if had {
					removed = append(removed, name)
				}
			}
		}
	}
	s.base, s.own = cur, nil
	if len(send) == 0 && len(removed) == 0 && !(respond && s.wildcard) {
		return nil
	}
	return &discoveryv3.DeltaDiscoveryResponse{
		TypeUrl:           s.typeURL,
		SystemVersionInfo: cur.version,
		Resources:         send,
		RemovedResources:  removed,
	}
}

// deltaStream is one delta xDS stream.
type deltaStream struct {
	d  *deltaServer
	id int64
	st stream.DeltaStream

	sender // its mu guards the fields below too
	node   *corev3.Node
	subs   []*deltaSub
	nonce  int64
}

// sender is the send state of a stream (delta or state of the world): one
// sender at a time (the handler goroutine or a pool worker), and no send
// once the handler has returned (grpc forbids it).
type sender struct {
	mu      sync.Mutex
	sending bool  // a sender is running
	sendErr error // a send failed: the stream is over
	closed  bool
	// idle, when set (by the closing handler), is closed when the
	// running sender stops.
	idle chan struct{}
}

// stopSendingLocked marks the sender stopped; s.mu held.
func (s *sender) stopSendingLocked() {
	s.sending = false
	if s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
}

// kick has f (the stream owning s) flushed by the pool, unless a sender
// is already running (it re-checks before it stops).
func (s *sender) kick(p *sendPool, f flusher) {
	s.mu.Lock()
	if s.sending || s.closed {
		s.mu.Unlock()
		return
	}
	s.sending = true
	s.mu.Unlock()
	p.submit(f)
}

// closeLocked marks the stream closed for its closing handler and waits,
// s.mu released meanwhile, for a running sender to stop: the client is
// gone or going (a failed Recv cancels the stream), so its send ends
// soon. s.mu held.
func (s *sender) closeLocked() {
	s.closed = true
	if s.sending {
		idle := make(chan struct{})
		s.idle = idle
		s.mu.Unlock()
		<-idle
		s.mu.Lock()
	}
}

// flushWith sends what collectLocked (called with s.mu held) returns until
// it returns nothing. The caller set s.sending.
func flushWith[R any](s *sender, collectLocked func() []R, send func(R) error) {
	for {
		s.mu.Lock()
		var resps []R
		if !s.closed && s.sendErr == nil {
			resps = collectLocked()
		}
		if len(resps) == 0 {
			s.stopSendingLocked()
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		for _, r := range resps {
			if err := send(r); err != nil {
				s.mu.Lock()
				s.sendErr = err
				s.stopSendingLocked()
				s.mu.Unlock()
				return
			}
		}
	}
}

// needs reports whether ds, typeURL's new snapshot, has something for the
// stream. A stream in sync with the previous snapshot and subscribed to
// none of the names changed or removed is in sync with ds as it is.
func (s *deltaStream) needs(typeURL string, ds *deltaSnapshot) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := s.sub(typeURL)
	if s.closed || sub == nil {
		return false
	}
	if sub.own != nil || sub.base == nil || sub.base.seq != ds.prevSeq || sub.respond {
		return true
	}
	for _, n := range ds.changed {
		if sub.interested(n) {
			return true
		}
	}
	for _, n := range ds.removed {
		if sub.interested(n) {
			return true
		}
	}
	sub.base = ds
	return false
}

func (s *deltaStream) sub(typeURL string) *deltaSub {
	for _, sub := range s.subs {
		if sub.typeURL == typeURL {
			return sub
		}
	}
	return nil
}

// kick has the stream's pending responses sent by the pool, unless a
// sender is already running (it re-checks before it stops).
func (s *deltaStream) kick(p *sendPool) { s.sender.kick(p, s) }

// collectLocked evaluates every subscription against its type's current
// snapshot and returns the responses, nonces set and callbacks called.
func (s *deltaStream) collectLocked() []*discoveryv3.DeltaDiscoveryResponse {
	var out []*discoveryv3.DeltaDiscoveryResponse
	for _, sub := range s.subs {
		resp := sub.evaluate(s.d.snapshot(sub.typeURL))
		if resp == nil {
			continue
		}
		s.nonce++
		resp.Nonce = strconv.FormatInt(s.nonce, 10)
		if s.d.cb != nil {
			s.d.cb.OnStreamDeltaResponse(s.id, nil, resp)
		}
		out = append(out, resp)
	}
	return out
}

// flush sends until nothing is pending. The caller set s.sending.
func (s *deltaStream) flush() { flushWith(&s.sender, s.collectLocked, s.st.Send) }

// handle serves one stream until the client ends it (or a request or a
// send fails). defaultTypeURL is resource.AnyType for ADS.
func (d *deltaServer) handle(st stream.DeltaStream, defaultTypeURL string) error {
	s := &deltaStream{d: d, id: d.ids.Add(1), st: st, node: &corev3.Node{}}
	if d.cb != nil {
		if err := d.cb.OnDeltaStreamOpen(st.Context(), s.id, defaultTypeURL); err != nil {
			return err
		}
	}
	d.mu.Lock()
	d.streams[s] = struct{}{}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.streams, s)
		d.mu.Unlock()
		s.mu.Lock()
		s.closeLocked()
		for _, sub := range s.subs {
			d.sets.release(sub.names)
			sub.names = nil
		}
		node := s.node
		s.mu.Unlock()
		if d.cb != nil {
			d.cb.OnDeltaStreamClosed(s.id, node)
		}
	}()
	return serveRequests(d.ctx, st.Recv, func(req *discoveryv3.DeltaDiscoveryRequest) error { return s.request(req, defaultTypeURL) })
}

// serveRequests is a stream's receive loop: each request goes to handle
// until the client ends the stream or the server stops (nil), or handle
// fails (its error ends the stream).
func serveRequests[R any](ctx context.Context, recv func() (R, error), handle func(R) error) error {
	for {
		req, err := recv()
		if err != nil {
			return nil // the client ended the stream
		}
		if ctx.Err() != nil {
			return nil // the server is stopping
		}
		if err := handle(req); err != nil {
			return err
		}
	}
}

// request applies one request and sends what it asks for from the
// handler goroutine (or leaves it to the running sender).
func (s *deltaStream) request(req *discoveryv3.DeltaDiscoveryRequest, defaultTypeURL string) error {
	if s.d.cb != nil {
		if err := s.d.cb.OnStreamDeltaRequest(s.id, req); err != nil {
			return err
		}
	}
	s.mu.Lock()
	if err := s.sendErr; err != nil {
		s.mu.Unlock()
		return err
	}
	// The node may come only with the first request.
	if req.GetNode() != nil {
		s.node = req.GetNode()
	}
	typeURL := req.GetTypeUrl()
	if typeURL == "" {
		if defaultTypeURL == resource.AnyType {
			s.mu.Unlock()
			return status.Errorf(codes.InvalidArgument, "type URL is required for ADS")
		}
		typeURL = defaultTypeURL
	}
	if !servedType(typeURL) {
		// Nothing to serve, ever: no subscription (a client naming many
		// type URLs holds nothing for them), no response, as for a type
		// whose snapshot is empty.
		s.mu.Unlock()
		return nil
	}
	sub := s.sub(typeURL)
	if sub == nil {
		// The first request of the type: legacy wildcard when it
		// subscribes nothing; the versions the client says it has.
		sub = &deltaSub{typeURL: unique.Make(typeURL).Value(), own: map[string]string{}}
		sub.legacy = len(req.GetResourceNamesSubscribe()) == 0
		sub.wildcard = sub.legacy
		for n, v := range req.GetInitialResourceVersions() {
			sub.own[unique.Make(n).Value()] = v
		}
		s.subs = append(s.subs, sub)
		sub.update(&s.d.sets, req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe())
	} else {
		sub.update(&s.d.sets, req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe())
	}
	if sub.wildcard && req.GetResponseNonce() == "" {
		sub.respond = true
	}
	if s.sending {
		s.mu.Unlock()
		return nil
	}
	s.sending = true
	s.mu.Unlock()
	s.flush()
	s.mu.Lock()
	err := s.sendErr
	s.mu.Unlock()
	return err
}

// sendPool runs the pushes of a new snapshot: size workers take streams
// from a queue and flush them. A worker blocked in a send (a client that
// stopped reading, its flow-control window full) holds only itself: when
// every worker has been in one send for stuckAfter and work is queued, one
// more worker starts.
type sendPool struct {
	size       int
	stuckAfter time.Duration

	mu      sync.Mutex
	queue   []flusher
	workers map[*poolWorker]struct{}
	check   *time.Timer
}

type poolWorker struct {
	since atomic.Int64 // unix nanos the current flush started; 0 when idle
}

// flusher is a stream the pool sends for (deltaStream, sotwStream).
type flusher interface{ flush() }

func (p *sendPool) submit(s flusher) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.queue = append(p.queue, s)
	p.growLocked()
}

// growLocked starts a worker if fewer than size run, or if every running
// one is stuck; otherwise it checks again after stuckAfter while work
// waits.
func (p *sendPool) growLocked() {
	if len(p.queue) == 0 {
		return
	}
	stuck := 0
	now := time.Now().UnixNano()
	for w := range p.workers {
		if t := w.since.Load(); t != 0 && now-t >= int64(p.stuckAfter) {
			stuck++
		}
	}
	if len(p.workers)-stuck < p.size {
		w := &poolWorker{}
		if p.workers == nil {
			p.workers = map[*poolWorker]struct{}{}
		}
		p.workers[w] = struct{}{}
		go p.work(w)
		return
	}
	if p.check == nil {
		p.check = time.AfterFunc(p.stuckAfter, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.check = nil
			p.growLocked()
		})
	}
}

func (p *sendPool) work(w *poolWorker) {
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			delete(p.workers, w)
			p.mu.Unlock()
			return
		}
		s := p.queue[0]
		p.queue[0] = nil
		p.queue = p.queue[1:]
		if len(p.queue) == 0 {
			p.queue = nil
		}
		p.mu.Unlock()
		w.since.Store(time.Now().UnixNano())
		s.flush()
		w.since.Store(0)
	}
}
