package xds

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/upstream"
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// Logger; nil discards.
	Logger *slog.Logger
	// Source is the source of truth (file or Consul discovery).
	Source discovery.Source
	// Upstreams lists the services to serve with their settings.
	Upstreams []Upstream
	// ServeCatalog, with a Source that is a discovery.Catalog, also serves
	// every service the source knows; those not in Upstreams get Defaults.
	ServeCatalog bool
	// Defaults are the settings of catalog services not in Upstreams
	// (nil: upstream.Settings defaults).
	Defaults *upstream.Settings
	// GRPCOptions are passed to the gRPC server Serve creates (TLS
	// credentials, keepalive), after the control-plane sizing of
	// ControlPlaneGRPCOptions.
	GRPCOptions []grpc.ServerOption
	// Debounce coalesces source changes: the first change after a push
	// starts a timer, and every change until it fires makes one new
	// snapshot. Zero rebuilds on every change.
	Debounce time.Duration
}

// ControlPlaneGRPCOptions size grpc-go for many mostly idle streams: the
// default per-connection 32 KB read and 32 KB write buffers dominate a
// control plane's memory per client, and xDS messages are written whole,
// so small buffers cost little. The windows stay at grpc-go's 64 KB
// (a full EDS response fits without a window update).
func ControlPlaneGRPCOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ReadBufferSize(4 << 10),
		grpc.WriteBufferSize(4 << 10),
		grpc.SharedWriteBuffer(true),
		grpc.InitialWindowSize(64 << 10),
		grpc.InitialConnWindowSize(64 << 10),
	}
}

// Server is the embedded xDS server: per-type snapshots fed from a
// discovery source, served over ADS and the per-type services (CDS, EDS,
// LDS, RDS), state of the world (sotwServer) and delta (deltaServer).
//
// Every change the source reports for a served service (a snapshot with
// different endpoints, a resource error) and every SetSettings call makes
// one new snapshot, set for all nodes at once (after Debounce, when set).
// Each resource type has its own version, a hash of its content: an
// endpoint change moves only the EDS version (SotW clients get only EDS;
// delta clients only the changed assignments), a settings change only
// CDS, and two servers with the same state serve the same versions, so a
// client moving between replicas receives nothing new.
//
// Concurrency: all methods are safe for concurrent use. Source callbacks
// and SetSettings serialise on one mutex; streams (state of the world and
// delta) run on grpc-go's handler goroutine and their handler's send pool.
type Server struct {
	log   *slog.Logger
	src   discovery.Source
	xds   *handlers
	delta *deltaServer // serves delta streams (delta.go)
	sotw  *sotwServer  // serves state-of-the-world streams (sotw.go)
	gopts []grpc.ServerOption

	ctx    context.Context
	cancel context.CancelFunc

	setMu sync.Mutex // serialises SetSettings and Stop

	defaults      upstream.Settings
	catalogCancel func()

	mu       sync.Mutex
	explicit map[string]Upstream // from SetSettings
	catalog  []string            // services of the source (ServeCatalog)
	settings map[string]Upstream // served: explicit, then catalog with defaults
	watches  map[string]func()
	snaps    map[string]*discovery.Snapshot
	batching int
	version  string // hash of the per-type versions ("" before the first)
	versions map[string]string
	pushes   uint64 // snapshots set
	stopped  bool
	debounce time.Duration
	pending  *time.Timer // debounce timer armed, nil when idle
	grpcs    []*grpc.Server

	cb serverCallbacks
}

// NewServer validates the settings, starts watching every configured
// service on the source and builds the first snapshot (version 1).
func NewServer(opts ServerOptions) (*Server, error) {
	if opts.Source == nil {
		return nil, fmt.Errorf("%w: server needs a discovery source", ErrConfig)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "xds-server")
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		log:      log,
		src:      opts.Source,
		gopts:    append(ControlPlaneGRPCOptions(), opts.GRPCOptions...),
		debounce: opts.Debounce,
		ctx:      ctx,
		cancel:   cancel,
		settings: map[string]Upstream{},
		explicit: map[string]Upstream{},
		watches:  map[string]func(){},
		snaps:    map[string]*discovery.Snapshot{},
	}
	s.cb.log = log
	s.cb.last = map[int64]map[string]sentResponse{}
	s.delta = newDeltaServer(ctx, &s.cb)
	s.sotw = newSotwServer(ctx, &s.cb, &s.delta.sets)
	s.xds = newHandlers(s.sotw, s.delta)
	if opts.Defaults != nil {
		s.defaults = *opts.Defaults
		if err := s.defaults.Validate("defaults"); err != nil {
			cancel()
			return nil, fmt.Errorf("%w: %w", ErrInvalidSettings, err)
		}
	} else {
		s.defaults.SetDefaults()
	}
	if err := s.SetSettings(opts.Upstreams); err != nil {
		cancel()
		return nil, err
	}
	if cat, ok := opts.Source.(discovery.Catalog); ok && opts.ServeCatalog {
		s.catalogCancel = cat.WatchServices(s.setCatalog)
	}
	return s, nil
}

// setCatalog is the source's list of services changing.
func (s *Server) setCatalog(services []string) {
	s.setMu.Lock()
	defer s.setMu.Unlock()
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.catalog = slices.Clone(services)
	next := s.servedLocked(s.explicit)
	s.mu.Unlock()
	s.apply(next)
}

// servedLocked is what to serve: the explicit upstreams, and every catalog
// service with the defaults.
func (s *Server) servedLocked(explicit map[string]Upstream) map[string]Upstream {
	next := make(map[string]Upstream, len(explicit)+len(s.catalog))
	for _, name := range s.catalog {
		next[name] = Upstream{Service: name, Settings: s.defaults}
	}
	for name, u := range explicit {
		next[name] = u
	}
	return next
}

// SetSettings replaces the served services and their settings: services
// no longer listed stop being watched and served, new ones start. It makes
// one new snapshot version.
func (s *Server) SetSettings(settings []Upstream) error {
	next := make(map[string]Upstream, len(settings))
	for i, cs := range settings {
		if err := cs.Validate(fmt.Sprintf("upstreams[%d]", i)); err != nil {
			return err
		}
		if _, dup := next[cs.Service]; dup {
			return fmt.Errorf("%w: upstreams[%d].service: %q is listed twice", ErrInvalidSettings, i, cs.Service)
		}
		next[cs.Service] = cs
	}
	s.setMu.Lock()
	defer s.setMu.Unlock()
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return ErrClosed
	}
	s.explicit = next
	served := s.servedLocked(next)
	s.mu.Unlock()
	return s.apply(served)
}

// apply serves exactly next: watches of services no longer served end,
// new ones start, and one snapshot follows. Callers hold setMu.
func (s *Server) apply(next map[string]Upstream) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return ErrClosed
	}
	s.batching++
	var cancels []func()
	var added []string
	for name, cancel := range s.watches {
		if _, keep := next[name]; !keep {
			cancels = append(cancels, cancel)
			delete(s.watches, name)
			delete(s.snaps, name)
		}
	}
	for name := range next {
		if _, ok := s.settings[name]; !ok {
			added = append(added, name)
		}
	}
	s.settings = next
	s.mu.Unlock()

	// Watch and cancel outside s.mu: a source may deliver the current
	// snapshot from inside Watch, and a callback in flight holds the
	// source's lock while it waits for s.mu.
	for _, cancel := range cancels {
		cancel()
	}
	sort.Strings(added)
	newWatches := make(map[string]func(), len(added))
	for _, name := range added {
		newWatches[name] = s.src.Watch(name, s.watcher(name))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for name, cancel := range newWatches {
		s.watches[name] = cancel
	}
	s.batching--
	s.rebuildLocked()
	return nil
}

func (s *Server) watcher(service string) discovery.Watcher {
	return discovery.WatcherFuncs{
		Update: func(snap *discovery.Snapshot) { s.update(service, snap) },
		ResourceError: func(err error) {
			s.log.Warn("service data dropped", "service", service, "err", err)
			s.update(service, nil)
		},
		AmbientError: func(err error) {
			s.log.Warn("discovery source in trouble; serving the last endpoints", "service", service, "err", err)
		},
	}
}

// update stores a service's snapshot (nil: none) and rebuilds unless the
// endpoints are unchanged.
func (s *Server) update(service string, snap *discovery.Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.settings[service]; !ok || s.stopped {
		return
	}
	old, had := s.snaps[service]
	if (had && old.Equal(snap)) || (!had && snap == nil) {
		return // nothing changed: no new version
	}
	if snap == nil {
		delete(s.snaps, service)
	} else {
		s.snaps[service] = snap
	}
	if s.batching > 0 {
		return
	}
	if s.debounce <= 0 {
		s.rebuildLocked()
		return
	}
	if s.pending == nil {
		s.pending = time.AfterFunc(s.debounce, s.flush)
	}
}

// flush is the debounce timer: one rebuild for the changes since it was
// armed.
func (s *Server) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending = nil
	if !s.stopped {
		s.rebuildLocked()
	}
}

// contentVersion is a resource type's version: a hash of its resources
// (sorted by name, deterministic encoding), so that it changes exactly
// when the content does and is the same on every replica.
func contentVersion(items []types.Resource) string {
	sorted := make([]types.Resource, len(items))
	copy(sorted, items)
	sort.Slice(sorted, func(i, j int) bool { return cache.GetResourceName(sorted[i]) < cache.GetResourceName(sorted[j]) })
	h := sha256.New()
	mo := proto.MarshalOptions{Deterministic: true}
	var buf []byte
	for _, r := range sorted {
		var err error
		buf, err = mo.MarshalAppend(buf[:0], r)
		if err != nil {
			// Translated resources always marshal; hash the name so
			// the version still moves with the set.
			buf = append(buf[:0], cache.GetResourceName(r)...)
		}
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(buf)))
		h.Write(n[:])
		h.Write(buf)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

func (s *Server) rebuildLocked() {
	if s.pending != nil {
		s.pending.Stop()
		s.pending = nil
	}
	list := make([]Upstream, 0, len(s.settings))
	for _, cs := range s.settings {
		list = append(list, cs)
	}
	res, err := Resources(list, s.snaps)
	if err != nil {
		s.log.Warn("some endpoints cannot be served", "err", err)
	}
	snap := &cache.Snapshot{}
	versions := make(map[string]string, len(res))
	typeURLs := make([]string, 0, len(res))
	for typ, items := range res {
		v := contentVersion(items)
		snap.Resources[cache.GetResponseType(typ)] = cache.NewResources(v, items)
		versions[typ] = v
		typeURLs = append(typeURLs, typ)
	}
	sort.Strings(typeURLs)
	all := sha256.New()
	for _, typ := range typeURLs {
		all.Write([]byte(typ + "=" + versions[typ] + "\n"))
	}
	version := hex.EncodeToString(all.Sum(nil)[:8])
	if version == s.version {
		return // same content: nothing to push
	}
	if err := consistent(snap); err != nil {
		// Resources builds consistent snapshots by construction; this
		// is a programming error, and the last good snapshot stays.
		s.log.Error("snapshot not set", "version", version, "err", err)
		return
	}
	var moved []string
	for typ, v := range versions {
		if s.versions[typ] != v {
			moved = append(moved, typ)
		}
	}
	s.cb.pushed(moved, time.Now())
	for _, typ := range servedTypes {
		if s.version != "" && s.versions[typ] == versions[typ] {
			continue // unchanged: its watches stay asleep
		}
		if err := s.delta.set(typ, versions[typ], snap.GetResources(typ)); err != nil {
			s.log.Error("delta snapshot not set", "version", version, "type", typ, "err", err)
			return
		}
		s.sotw.set(typ, s.delta.snapshot(typ))
	}
	s.version, s.versions = version, versions
	s.pushes++
	s.log.Debug("snapshot set", "version", version, "services", len(list))
}

// consistent checks that every name a resource refers to is in the
// snapshot. Snapshot.Consistent covers CDS→EDS; go-control-plane follows
// RDS references only from listeners' filter chains, not from API
// listeners, so the LDS→RDS half is checked here.
func consistent(snap *cache.Snapshot) error {
	routes := snap.GetResources(resource.RouteType)
	referenced := map[string]bool{}
	for name, r := range snap.GetResources(resource.ListenerType) {
		l, ok := r.(*listenerv3.Listener)
		if !ok {
			return fmt.Errorf("%w: listener %q is a %T", ErrInconsistent, name, r)
		}
		for _, rn := range routeNames(l) {
			if _, ok := routes[rn]; !ok {
				return fmt.Errorf("%w: listener %q refers to missing route %q", ErrInconsistent, name, rn)
			}
			referenced[rn] = true
		}
	}
	for rn := range routes {
		if !referenced[rn] {
			return fmt.Errorf("%w: route %q is referenced by no listener", ErrInconsistent, rn)
		}
	}
	withoutRoutes := map[resource.Type][]types.Resource{}
	for _, t := range []resource.Type{resource.ClusterType, resource.EndpointType, resource.ListenerType} {
		for _, r := range snap.GetResources(t) {
			withoutRoutes[t] = append(withoutRoutes[t], r)
		}
	}
	cds, err := cache.NewSnapshot(snap.GetVersion(resource.ClusterType), withoutRoutes)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInconsistent, err)
	}
	if err := cds.Consistent(); err != nil {
		return fmt.Errorf("%w: %v", ErrInconsistent, err)
	}
	return nil
}

// Version identifies the snapshot being served: a hash of the per-type
// versions (see Versions).
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Versions returns the version served per type URL.
func (s *Server) Versions() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.versions))
	for k, v := range s.versions {
		out[k] = v
	}
	return out
}

// servedTypes are the resource types the server serves, each with its own
// version and snapshot.
var servedTypes = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}

// served returns the type's snapshot as the stream handlers serve it (nil
// before the first).
func (s *Server) served(typeURL string) *deltaSnapshot { return s.delta.snapshot(typeURL) }

// Register registers ADS and the CDS, EDS, LDS and RDS services (state of
// the world and delta) on g. Stop ends the streams of the servers Serve
// runs; on g, a delta stream waiting for its client's next request ends
// when g stops (or the client leaves), not at Stop.
func (s *Server) Register(g *grpc.Server) {
	s.xds.register(g)
}

// Serve serves xDS on lis until Stop. It returns nil after Stop.
func (s *Server) Serve(lis net.Listener) error {
	g := grpc.NewServer(s.gopts...)
	s.Register(g)
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		lis.Close()
		return ErrClosed
	}
	s.grpcs = append(s.grpcs, g)
	s.mu.Unlock()
	s.log.Info("serving xDS", "addr", lis.Addr().String())
	if err := g.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("xds: serve %s: %w", lis.Addr(), err)
	}
	return nil
}

// Stop stops watching the source, ends every stream and the gRPC servers
// Serve started. It does not close the source.
func (s *Server) Stop() {
	s.setMu.Lock()
	defer s.setMu.Unlock()
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	catalogCancel := s.catalogCancel
	if s.pending != nil {
		s.pending.Stop()
		s.pending = nil
	}
	watches, grpcs := s.watches, s.grpcs
	s.watches, s.grpcs = map[string]func(){}, nil
	s.mu.Unlock()
	if catalogCancel != nil {
		catalogCancel()
	}
	for _, cancel := range watches {
		cancel()
	}
	s.cancel()
	for _, g := range grpcs {
		g.Stop()
	}
}

// ServerStats is what /config_dump shows of the server.
type ServerStats struct {
	Version  string            `json:"version"`
	Versions map[string]string `json:"versions"` // per type URL
	Pushes   uint64            `json:"pushes"`   // snapshots set
	Services []string          `json:"services"`
	Streams  int64             `json:"streams"` // open streams (SotW and delta)
	Requests uint64            `json:"requests"`
	ACKs     uint64            `json:"acks"`
	NACKs    uint64            `json:"nacks"`
	LastNACK *NACKInfo         `json:"last_nack,omitempty"`
	// Per type URL: responses sent, ACKs and NACKs received.
	Responses   map[string]uint64 `json:"responses_by_type,omitempty"`
	ACKsByType  map[string]uint64 `json:"acks_by_type,omitempty"`
	NACKsByType map[string]uint64 `json:"nacks_by_type,omitempty"`
	// PushLatency: from a snapshot set to each response carrying it.
	PushLatency LatencyHistogram `json:"-"`
}

// LatencyHistogram is a cumulative histogram in seconds.
type LatencyHistogram struct {
	Buckets []float64 // upper bounds
	Counts  []uint64  // cumulative, one per bucket
	Sum     float64
	Count   uint64
}

// NACKInfo describes one rejected response.
type NACKInfo struct {
	Node    string    `json:"node,omitempty"` // the rejecting node (server side)
	TypeURL string    `json:"type_url"`
	Version string    `json:"version,omitempty"` // the rejected version, when known
	Nonce   string    `json:"nonce"`
	Detail  string    `json:"detail"`
	Time    time.Time `json:"time"`
}

// Stats returns counters and the last NACK any node sent.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	st := ServerStats{Version: s.version, Pushes: s.pushes, Versions: make(map[string]string, len(s.versions))}
	for k, v := range s.versions {
		st.Versions[k] = v
	}
	for name := range s.settings {
		st.Services = append(st.Services, name)
	}
	s.mu.Unlock()
	sort.Strings(st.Services)
	st.Streams = s.cb.streams.Load()
	st.Requests = s.cb.requests.Load()
	st.ACKs = s.cb.acks.Load()
	st.NACKs = s.cb.nacks.Load()
	s.cb.mu.Lock()
	if s.cb.lastNACK != nil {
		n := *s.cb.lastNACK
		st.LastNACK = &n
	}
	st.Responses = maps.Clone(s.cb.sentByType)
	st.ACKsByType = maps.Clone(s.cb.acksByType)
	st.NACKsByType = maps.Clone(s.cb.nacksByType)
	h := s.cb.latency
	s.cb.mu.Unlock()
	st.PushLatency = LatencyHistogram{Buckets: latencyBuckets[:], Counts: make([]uint64, len(latencyBuckets)), Sum: h.sum, Count: h.n}
	var cum uint64
	for i := range latencyBuckets {
		cum += h.counts[i]
		st.PushLatency.Counts[i] = cum
	}
	return st
}

// sentResponse remembers the last response of one type on one stream.
type sentResponse struct{ nonce, version string }

// serverCallbacks count requests, ACKs and NACKs and keep a NACKed
// response from being sent again at once (see OnStreamRequest).
type serverCallbacks struct {
	log      *slog.Logger
	streams  atomic.Int64
	requests atomic.Uint64
	acks     atomic.Uint64
	nacks    atomic.Uint64

	mu          sync.Mutex
	last        map[int64]map[string]sentResponse
	lastNACK    *NACKInfo
	clients     map[int64]*clientState
	pushedAt    map[string]time.Time // per type URL: when its current version was set
	latency     histogram            // snapshot set → response sent
	sentByType  map[string]uint64
	acksByType  map[string]uint64
	nacksByType map[string]uint64
}

// clientState is one stream's view for /clients.
type clientState struct {
	node      string
	delta     bool
	connected time.Time
	acked     map[string]string // type URL → version ACKed
	lastNACK  *NACKInfo
}

// ClientInfo is one connected stream as /clients shows it.
type ClientInfo struct {
	Node      string            `json:"node"`
	Stream    int64             `json:"stream"`
	Delta     bool              `json:"delta"`
	Connected time.Time         `json:"connected"`
	ACKed     map[string]string `json:"acked"` // type URL → version
	LastNACK  *NACKInfo         `json:"last_nack,omitempty"`
}

// Clients lists the connected streams, by node id then stream.
func (s *Server) Clients() []ClientInfo {
	c := &s.cb
	c.mu.Lock()
	out := make([]ClientInfo, 0, len(c.clients))
	for id, st := range c.clients {
		ci := ClientInfo{Node: st.node, Stream: id, Delta: st.delta, Connected: st.connected, ACKed: maps.Clone(st.acked)}
		if ci.ACKed == nil {
			ci.ACKed = map[string]string{}
		}
		if st.lastNACK != nil {
			n := *st.lastNACK
			ci.LastNACK = &n
		}
		out = append(out, ci)
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].Stream < out[j].Stream
	})
	return out
}

// histogram is a fixed-bucket latency histogram (seconds).
type histogram struct {
	counts [len(latencyBuckets) + 1]uint64
	sum    float64
	n      uint64
}

var latencyBuckets = [...]float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

func (h *histogram) observe(v float64) {
	i := sort.SearchFloat64s(latencyBuckets[:], v)
	h.counts[i]++
	h.sum += v
	h.n++
}

func (c *serverCallbacks) open(id int64, delta bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.clients == nil {
		c.clients = map[int64]*clientState{}
	}
	c.clients[id] = &clientState{delta: delta, connected: time.Now(), acked: map[string]string{}}
}

func (c *serverCallbacks) closed(id int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.clients, id)
	delete(c.last, id)
}

// request records the node, and an ACK or NACK of typeURL; c.mu held.
func (c *serverCallbacks) requestLocked(id int64, node *corev3.Node, typeURL, ackVersion string, nack *NACKInfo, isReply bool) {
	typeURL = statType(typeURL)
	st := c.clients[id]
	if st == nil {
		return
	}
	if node.GetId() != "" {
		st.node = node.GetId()
	}
	if !isReply {
		return
	}
	if nack != nil {
		st.lastNACK = nack
		inc(&c.nacksByType, typeURL)
		return
	}
	inc(&c.acksByType, typeURL)
	if ackVersion != "" && typeURL != otherType {
		st.acked[typeURL] = ackVersion
	}
}

// otherType is how the stats count a type URL the server does not serve.
const otherType = "other"

// statType is typeURL as the stats and /clients count it: one of the
// types served, or otherType (a client may send any type URL: the maps
// stay bounded).
func statType(typeURL string) string {
	if servedType(typeURL) {
		return typeURL
	}
	return otherType
}

// servedType reports whether the server serves resources of typeURL.
func servedType(typeURL string) bool { return slices.Contains(servedTypes, typeURL) }

func inc(m *map[string]uint64, k string) {
	if *m == nil {
		*m = map[string]uint64{}
	}
	(*m)[k]++
}

// responseLocked records a response sent; c.mu held.
func (c *serverCallbacks) responseLocked(typeURL string) {
	inc(&c.sentByType, typeURL)
	if at, ok := c.pushedAt[typeURL]; ok {
		c.latency.observe(time.Since(at).Seconds())
	}
}

// pushed records when a type's new version was set.
func (c *serverCallbacks) pushed(types []string, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pushedAt == nil {
		c.pushedAt = map[string]time.Time{}
	}
	for _, t := range types {
		c.pushedAt[t] = at
	}
}

var _ callbacks = (*serverCallbacks)(nil)

func (c *serverCallbacks) OnStreamOpen(_ context.Context, id int64, _ string) error {
	c.streams.Add(1)
	c.open(id, false)
	return nil
}

func (c *serverCallbacks) OnStreamClosed(id int64, _ *corev3.Node) {
	c.streams.Add(-1)
	c.closed(id)
}

// OnStreamRequest counts the request. A NACK names the last good version;
// answered as a plain request, it would get the rejected version again at
// once, and the client would NACK again, in a tight loop. So a NACK of the
// last response sent on this stream is recorded as if it acknowledged that
// version: the state-of-the-world handler then waits for the next change.
func (c *serverCallbacks) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	c.requests.Add(1)
	if req.GetResponseNonce() == "" {
		c.mu.Lock()
		c.requestLocked(id, req.GetNode(), req.GetTypeUrl(), "", nil, false)
		c.mu.Unlock()
		return nil
	}
	if req.GetErrorDetail() == nil {
		c.acks.Add(1)
		c.mu.Lock()
		c.requestLocked(id, req.GetNode(), req.GetTypeUrl(), req.GetVersionInfo(), nil, true)
		c.mu.Unlock()
		return nil
	}
	c.nacks.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	sent := c.last[id][req.GetTypeUrl()]
	n := &NACKInfo{
		Node:    req.GetNode().GetId(),
		TypeURL: req.GetTypeUrl(),
		Nonce:   req.GetResponseNonce(),
		Detail:  req.GetErrorDetail().GetMessage(),
		Time:    time.Now(),
	}
	if sent.nonce == req.GetResponseNonce() {
		n.Version = sent.version
		req.VersionInfo = sent.version
	}
	c.lastNACK = n
	c.requestLocked(id, req.GetNode(), req.GetTypeUrl(), "", n, true)
	c.log.Warn("xDS response rejected", "node", n.Node, "type", n.TypeURL, "version", n.Version, "detail", n.Detail)
	return nil
}

func (c *serverCallbacks) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.last[id]
	if m == nil {
		m = map[string]sentResponse{}
		c.last[id] = m
	}
	m[resp.GetTypeUrl()] = sentResponse{nonce: resp.GetNonce(), version: resp.GetVersionInfo()}
	c.responseLocked(resp.GetTypeUrl())
}

func (c *serverCallbacks) OnDeltaStreamOpen(_ context.Context, id int64, _ string) error {
	c.streams.Add(1)
	c.open(id, true)
	return nil
}

func (c *serverCallbacks) OnDeltaStreamClosed(id int64, _ *corev3.Node) {
	c.streams.Add(-1)
	c.closed(id)
}

func (c *serverCallbacks) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	c.requests.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if req.GetResponseNonce() == "" {
		c.requestLocked(id, req.GetNode(), req.GetTypeUrl(), "", nil, false)
		return nil
	}
	sent := c.last[id][req.GetTypeUrl()]
	version := ""
	if sent.nonce == req.GetResponseNonce() {
		version = sent.version
	}
	if req.GetErrorDetail() == nil {
		c.acks.Add(1)
		c.requestLocked(id, req.GetNode(), req.GetTypeUrl(), version, nil, true)
		return nil
	}
	c.nacks.Add(1)
	c.lastNACK = &NACKInfo{
		Node:    req.GetNode().GetId(),
		TypeURL: req.GetTypeUrl(),
		Version: version,
		Nonce:   req.GetResponseNonce(),
		Detail:  req.GetErrorDetail().GetMessage(),
		Time:    time.Now(),
	}
	n := *c.lastNACK
	c.requestLocked(id, req.GetNode(), req.GetTypeUrl(), "", &n, true)
	c.log.Warn("xDS delta response rejected", "node", req.GetNode().GetId(), "type", req.GetTypeUrl(), "detail", req.GetErrorDetail().GetMessage())
	return nil
}

func (c *serverCallbacks) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.last[id]
	if m == nil {
		m = map[string]sentResponse{}
		c.last[id] = m
	}
	m[resp.GetTypeUrl()] = sentResponse{nonce: resp.GetNonce(), version: resp.GetSystemVersionInfo()}
	c.responseLocked(resp.GetTypeUrl())
}
