package xds

import (
	"context"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// The state-of-the-world xDS handler. go-control-plane's sotw server runs
// a receive goroutine beside each stream's handler, its snapshot cache
// keeps a watch (with the request) per stream and type, and every push
// builds and marshals each stream's response on its own. This handler
// keeps the protocol, go-control-plane's semantics (sotw server and
// snapshot cache, see sotwStream.request and sotwServer.set) and the same
// callbacks, with the pieces of the delta handler (delta.go):
//
//   - one goroutine per stream (grpc's handler goroutine receives; a push
//     is sent by a sendPool, or by the handler when a request asks);
//   - the delta handler's per-type deltaSnapshot: each resource marshalled
//     once, into an Any shared by both handlers;
//   - per snapshot, one resource list (sotwBody) per distinct interned
//     name set (and one for wildcard), shared by every stream asking for
//     the same names: a response is a small struct around it.
//
// Differences from go-control-plane v0.14.0 a client may see: resources
// come sorted by name; an explicit "*" among resource_names is served as
// the wildcard it is (go-control-plane filters by the names literally); a
// stream that subscribes to nothing (no names after a named request) gets
// an empty list at each version (go-control-plane sends every resource).
// Versions and when responses are sent are the same.

// sotwBody is the resources of one response, shared by every stream
// asking the same snapshot for the same names.
type sotwBody struct {
	names     []string // sorted: the names returned
	resources []*anypb.Any
}

// sotwSnap is one type's snapshot as served to state-of-the-world
// streams, with the bodies built from it so far.
type sotwSnap struct {
	ds *deltaSnapshot

	mu      sync.Mutex
	all     *sotwBody
	byNames map[string]*sotwBody // by nameSet.key ("" for none)
}

// body returns the resources for a subscription (wildcard: all).
func (sn *sotwSnap) body(wildcard bool, names *nameSet) *sotwBody {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	if wildcard {
		if sn.all == nil {
			b := &sotwBody{names: make([]string, 0, len(sn.ds.res))}
			for name := range sn.ds.res {
				b.names = append(b.names, name)
			}
			slices.Sort(b.names)
			b.resources = make([]*anypb.Any, len(b.names))
			for i, name := range b.names {
				b.resources[i] = sn.ds.res[name].pb.Resource
			}
			sn.all = b
		}
		return sn.all
	}
	key := ""
	if names != nil {
		key = names.key
	}
	if b, ok := sn.byNames[key]; ok {
		return b
	}
	b := &sotwBody{}
	for _, name := range names.list() {
		if r, ok := sn.ds.res[name]; ok {
			b.names = append(b.names, r.pb.Name)
			b.resources = append(b.resources, r.pb.Resource)
		}
	}
	if sn.byNames == nil {
		sn.byNames = map[string]*sotwBody{}
	}
	sn.byNames[key] = b
	return b
}

func (s *nameSet) list() []string {
	if s == nil {
		return nil
	}
	return s.names
}

// sotwServer serves state-of-the-world streams from the delta server's
// snapshots (set after the delta server's).
type sotwServer struct {
	ctx context.Context
	cb  sotwv3.Callbacks

	ids  atomic.Int64 // from 1, as go-control-plane's; delta's start at deltaStreamIDBase
	sets *nameSets
	pool sendPool

	mu      sync.Mutex
	snaps   map[string]*sotwSnap
	streams map[*sotwStream]struct{}
}

func newSotwServer(ctx context.Context, cb sotwv3.Callbacks, sets *nameSets) *sotwServer {
	x := &sotwServer{ctx: ctx, cb: cb, sets: sets, snaps: map[string]*sotwSnap{}, streams: map[*sotwStream]struct{}{}}
	x.pool.size = max(4, runtime.GOMAXPROCS(0))
	x.pool.stuckAfter = time.Second
	return x
}

// snapshot returns the type's current snapshot (nil: none).
func (x *sotwServer) snapshot(typeURL string) *sotwSnap {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.snaps[typeURL]
}

// set publishes a type's new snapshot and answers, as go-control-plane's
// SetSnapshot does, every stream waiting on the type (its last request
// accepted and not answered) whose request's version differs from the new
// one, each with everything it asks for. go-control-plane compares only
// the type's version, not the resources a stream names, so neither does
// this: a stream whose resources did not change gets them again, with the
// new version.
func (x *sotwServer) set(typeURL string, ds *deltaSnapshot) {
	if ds == nil {
		return
	}
	x.mu.Lock()
	x.snaps[typeURL] = &sotwSnap{ds: ds}
	streams := make([]*sotwStream, 0, len(x.streams))
	for s := range x.streams {
		streams = append(streams, s)
	}
	x.mu.Unlock()
	for _, s := range streams {
		if s.push(typeURL, ds.version) {
			s.kick(&x.pool)
		}
	}
}

// sotwSub is one stream's state for one type: go-control-plane's
// subscription (stream.Subscription) and watch.
type sotwSub struct {
	typeURL string
	// legacy: wildcard because the first request named nothing, until a
	// request names something.
	legacy   bool
	wildcard bool
	names    *nameSet
	// returned: the names of the last response (less those unsubscribed
	// since), shared with its body until a request drops some.
	returned []string
	// nonce and version of the last response ("": none).
	nonce, sent string
	// watching: a request was accepted and not answered; version is the
	// version_info it carried (a NACK's: the version rejected).
	watching bool
	version  string
	// pending: answer at the next flush.
	pending bool
}

// setNames applies a request's resource_names as
// stream.Subscription.SetResourceSubscription does.
func (sub *sotwSub) setNames(sets *nameSets, names []string) {
	if sub.legacy {
		if len(names) == 0 {
			return
		}
		sub.legacy = false
	}
	explicit := false
	var rest []string
	for _, n := range names {
		if n == "*" {
			explicit = true
			continue
		}
		rest = append(rest, n)
	}
	slices.Sort(rest)
	rest = slices.Compact(rest)
	if !explicit {
		// Forget returned names no longer subscribed: subscribing them
		// again is then answered even if the version did not move.
		var kept []string
		dropped := false
		for _, n := range sub.returned {
			if _, ok := slices.BinarySearch(rest, n); ok {
				kept = append(kept, n)
			} else {
				dropped = true
			}
		}
		if dropped {
			sub.returned = kept
		}
	}
	sub.wildcard = explicit
	if old := sub.names; !slices.Equal(old.list(), rest) {
		sub.names = sets.get(rest)
		sets.release(old)
	}
}

// unreturned reports whether cur has a resource the subscription asks for
// that the last response did not carry (go-control-plane's CreateWatch
// answers such a request even at the same version).
func (sub *sotwSub) unreturned(cur *deltaSnapshot) bool {
	has := func(n string) bool { _, ok := slices.BinarySearch(sub.returned, n); return ok }
	if sub.wildcard || sub.legacy {
		for n := range cur.res {
			if !has(n) {
				return true
			}
		}
		return false
	}
	for _, n := range sub.names.list() {
		if _, ok := cur.res[n]; ok && !has(n) {
			return true
		}
	}
	return false
}

// sotwStream is one state-of-the-world stream.
type sotwStream struct {
	x  *sotwServer
	id int64
	st stream.Stream

	sender // its mu guards the fields below too
	node   *corev3.Node
	subs   []*sotwSub
	nonce  int64
}

func (s *sotwStream) sub(typeURL string) *sotwSub {
	for _, sub := range s.subs {
		if sub.typeURL == typeURL {
			return sub
		}
	}
	return nil
}

// push marks the type's response pending if the stream waits on it at
// another version, and reports whether a sender must run.
func (s *sotwStream) push(typeURL, version string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := s.sub(typeURL)
	if s.closed || sub == nil || !sub.watching || sub.version == version {
		return false
	}
	sub.watching, sub.pending = false, true
	return true
}

// kick has the stream's pending responses sent by the pool, unless a
// sender is already running (it re-checks before it stops).
func (s *sotwStream) kick(p *sendPool) { s.sender.kick(p, s) }

// collectLocked builds the pending responses, nonces set and callbacks
// called.
func (s *sotwStream) collectLocked() []*discoveryv3.DiscoveryResponse {
	var out []*discoveryv3.DiscoveryResponse
	for _, sub := range s.subs {
		if !sub.pending {
			continue
		}
		sub.pending = false
		cur := s.x.snapshot(sub.typeURL)
		if cur == nil {
			sub.watching = true
			continue
		}
		b := cur.body(sub.wildcard || sub.legacy, sub.names)
		s.nonce++
		resp := &discoveryv3.DiscoveryResponse{
			VersionInfo: cur.ds.version,
			Resources:   b.resources,
			TypeUrl:     sub.typeURL,
			Nonce:       strconv.FormatInt(s.nonce, 10),
		}
		sub.nonce, sub.sent, sub.returned = resp.Nonce, resp.VersionInfo, b.names
		if s.x.cb != nil {
			s.x.cb.OnStreamResponse(s.st.Context(), s.id, nil, resp)
		}
		out = append(out, resp)
	}
	return out
}

// flush sends until nothing is pending. The caller set s.sending.
func (s *sotwStream) flush() { flushWith(&s.sender, s.collectLocked, s.st.Send) }

// handle serves one stream until the client ends it (or a request or a
// send fails). defaultTypeURL is resource.AnyType for ADS.
func (x *sotwServer) handle(st stream.Stream, defaultTypeURL string) error {
	s := &sotwStream{x: x, id: x.ids.Add(1), st: st, node: &corev3.Node{}}
	if x.cb != nil {
		if err := x.cb.OnStreamOpen(st.Context(), s.id, defaultTypeURL); err != nil {
			return err
		}
	}
	x.mu.Lock()
	x.streams[s] = struct{}{}
	x.mu.Unlock()
	defer func() {
		x.mu.Lock()
		delete(x.streams, s)
		x.mu.Unlock()
		s.mu.Lock()
		s.closeLocked()
		for _, sub := range s.subs {
			x.sets.release(sub.names)
			sub.names = nil
		}
		node := s.node
		s.mu.Unlock()
		if x.cb != nil {
			x.cb.OnStreamClosed(s.id, node)
		}
	}()
	return serveRequests(x.ctx, st.Recv, func(req *discoveryv3.DiscoveryRequest) error { return s.request(req, defaultTypeURL) })
}

// request applies one request as go-control-plane's sotw server and
// snapshot cache do, and sends what it asks for from the handler
// goroutine (or leaves it to the running sender):
//
//   - a request whose response_nonce is not the last one sent for its
//     type is stale: ignored;
//   - otherwise it replaces the type's watch: answered at once, with the
//     current version, if its version_info differs from it or if it asks
//     for a resource the last response did not carry (a new name, or a
//     reconnecting client, whose stream has returned nothing yet);
//     otherwise answered at the type's next version;
//   - a NACK (error_detail) of the last response counts as carrying the
//     version rejected, so it waits for the next version instead of
//     getting the rejected one again.
func (s *sotwStream) request(req *discoveryv3.DiscoveryRequest, defaultTypeURL string) error {
	s.mu.Lock()
	if err := s.sendErr; err != nil {
		s.mu.Unlock()
		return err
	}
	// The node may come only with the first request.
	if req.GetNode() != nil {
		s.node = req.GetNode()
	} else {
		req.Node = s.node
	}
	s.mu.Unlock()
	if req.GetTypeUrl() == "" {
		if defaultTypeURL == resource.AnyType {
			return status.Errorf(codes.InvalidArgument, "type URL is required for ADS")
		}
		req.TypeUrl = defaultTypeURL
	}
	if s.x.cb != nil {
		if err := s.x.cb.OnStreamRequest(s.id, req); err != nil {
			return err
		}
	}
	typeURL := req.GetTypeUrl()
	if !servedType(typeURL) {
		// Nothing to serve, ever: no state (a client naming many type
		// URLs holds nothing for them), no response, as from
		// go-control-plane's cache for a type never set.
		return nil
	}
	s.mu.Lock()
	sub := s.sub(typeURL)
	if sub != nil && sub.nonce != "" && req.GetResponseNonce() != sub.nonce {
		s.mu.Unlock()
		return nil // stale
	}
	if sub == nil {
		sub = &sotwSub{typeURL: unique.Make(typeURL).Value(), legacy: true}
		s.subs = append(s.subs, sub)
	}
	sub.setNames(s.x.sets, req.GetResourceNames())
	version := req.GetVersionInfo()
	if req.GetErrorDetail() != nil && sub.nonce != "" {
		version = sub.sent
	}
	cur := s.x.snapshot(typeURL)
	switch {
	case sub.pending:
		// A push is about to answer it with the current version.
	case cur == nil || (version == cur.ds.version && !sub.unreturned(cur.ds)):
		sub.watching, sub.version = true, version
	default:
		sub.watching, sub.pending = false, true
	}
	if s.sending || !sub.pending {
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
