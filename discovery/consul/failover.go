package consul

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
)

// dcSep joins a service and a datacenter into the Fanout key of a service
// watched in another datacenter (Consul service names cannot hold '?').
const dcSep = "?dc="

func dcKey(service, dc string) string {
	if dc == "" {
		return service
	}
	return service + dcSep + dc
}

func splitKey(key string) (service, dc string) {
	service, dc, _ = strings.Cut(key, dcSep)
	return service, dc
}

func inDC(dc string) string {
	if dc == "" {
		return ""
	}
	return " in datacenter " + dc
}

// WatchDatacenter watches service in datacenter dc (the `?dc=` of the
// health query); an empty dc is the source's own datacenter, as Watch.
// Snapshots carry the service name joined with the datacenter as their
// Service. An unknown or unreachable datacenter is an ambient error,
// retried with backoff.
func (s *Source) WatchDatacenter(service, dc string, w discovery.Watcher) (cancel func()) {
	return s.Watch(dcKey(service, dc), w)
}

// Datacenters lists the datacenters Consul knows (/v1/catalog/datacenters).
func (s *Source) Datacenters(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	defer cancel()
	var dcs []string
	_, err := s.client.Raw().Query("/v1/catalog/datacenters", &dcs, (&api.QueryOptions{}).WithContext(ctx))
	return dcs, err
}

// WatchResolver follows the failover datacenters of service's
// service-resolver config entry (Failover["*"].Datacenters) with one
// blocking query, and calls fn with them each time they change (nil: no
// entry, or no failover in it). It lists the service-resolver entries
// rather than reading the one entry, because the list answers 200 (with an
// index to block on) whether or not the entry exists. Failed queries are
// logged and retried with backoff; fn is then not called. cancel stops the
// query; no call of fn follows its return.
func (s *Source) WatchResolver(service string, fn func(dcs []string)) (cancel func()) {
	ctx, stop := context.WithCancel(s.ctx)
	done := make(chan struct{})
	log := s.log.With("service", service, "config_entry", "service-resolver")
	go func() {
		defer close(done)
		var (
			have bool
			last []string
		)
		s.blockingLoop(ctx, log, "service-resolver "+service, func(ctx context.Context, index uint64) (uint64, error) {
			dcs, got, err := s.queryResolver(ctx, service, index)
			if err != nil || (have && slices.Equal(dcs, last)) {
				return got, err
			}
			have, last = true, dcs
			log.Info("service-resolver failover datacenters", "datacenters", dcs)
			fn(dcs)
			return got, nil
		})
	}()
	return func() {
		stop()
		<-done
	}
}

// queryResolver runs one blocking list query of service-resolver entries
// and returns the failover datacenters of service's entry.
func (s *Source) queryResolver(ctx context.Context, service string, index uint64) ([]string, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout(index, s.cfg.WaitTime, s.opts.RequestTimeout))
	defer cancel()
	q := &api.QueryOptions{Datacenter: s.cfg.Datacenter, AllowStale: true, WaitIndex: index, WaitTime: s.cfg.WaitTime}
	entries, meta, err := s.client.ConfigEntries().List(api.ServiceResolver, q.WithContext(ctx))
	if err != nil {
		return nil, 0, err
	}
	for _, e := range entries {
		r, ok := e.(*api.ServiceResolverConfigEntry)
		if !ok || r.Name != service {
			continue
		}
		if f, ok := r.Failover["*"]; ok && len(f.Datacenters) > 0 {
			return slices.Clone(f.Datacenters), meta.LastIndex, nil
		}
	}
	return nil, meta.LastIndex, nil
}

// DatacenterStatus is the state of one datacenter behind a FailoverWatch.
type DatacenterStatus struct {
	// Datacenter is the name ("" for the source's own datacenter).
	Datacenter string `json:"datacenter"`
	Priority   int    `json:"priority"`
	Endpoints  int    `json:"endpoints"`
	// Error is the last query error, until the datacenter answers again.
	Error string `json:"error,omitempty"`
}

// FailoverWatch watches one service in the source's own datacenter and in
// its failover datacenters, and delivers one snapshot to its watcher: the
// own datacenter's instances at priority 0, those of the i-th failover
// datacenter at priority i (an address seen twice keeps its lowest
// priority). The failover datacenters are fixed (the sidecar's file) or
// follow the service's service-resolver config entry.
type FailoverWatch struct {
	s       *Source
	service string
	w       discovery.Watcher

	deliver sync.Mutex // held while calling w: one callback at a time

	mu       sync.Mutex
	closed   bool
	dcs      []string // failover datacenters, in priority order
	state    map[string]*dcState
	version  uint64
	last     *discovery.Snapshot
	resolver func()
}

type dcState struct {
	cancel func()
	snap   *discovery.Snapshot
	err    error
}

// WatchFailover starts a FailoverWatch of service. With fixed non-nil,
// its datacenters are the failover (a key in the sidecar's file wins over
// Consul's config entry); with fixed nil, the service-resolver entry says.
func (s *Source) WatchFailover(service string, fixed []string, w discovery.Watcher) *FailoverWatch {
	f := &FailoverWatch{s: s, service: service, w: w, state: map[string]*dcState{}}
	f.setDatacenters(append([]string{""}, fixed...), false)
	if fixed == nil {
		f.resolver = s.WatchResolver(service, func(dcs []string) {
			f.setDatacenters(append([]string{""}, dcs...), true)
		})
	}
	return f
}

// Cancel stops every query of the watch; no callback follows its return.
func (f *FailoverWatch) Cancel() {
	f.mu.Lock()
	f.closed = true
	resolver := f.resolver
	f.mu.Unlock()
	if resolver != nil {
		resolver()
	}
	f.mu.Lock()
	states := f.state
	f.state = map[string]*dcState{}
	f.mu.Unlock()
	for _, st := range states {
		st.cancel()
	}
}

// Status reports each datacenter, in priority order.
func (f *FailoverWatch) Status() []DatacenterStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]DatacenterStatus, 0, len(f.dcs))
	for i, dc := range f.dcs {
		ds := DatacenterStatus{Datacenter: dc, Priority: i}
		if st := f.state[dc]; st != nil {
			if st.snap != nil {
				ds.Endpoints = len(st.snap.Endpoints)
			}
			if st.err != nil {
				ds.Error = st.err.Error()
			}
		}
		out = append(out, ds)
	}
	return out
}

// setDatacenters replaces the datacenter list (own datacenter first):
// queries of datacenters no longer listed stop, new ones start. redeliver
// sends the merged snapshot again (the priorities may have changed).
func (f *FailoverWatch) setDatacenters(dcs []string, redeliver bool) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.dcs = dcs
	var stop []func()
	for dc, st := range f.state {
		if !slices.Contains(dcs, dc) {
			delete(f.state, dc)
			stop = append(stop, st.cancel)
		}
	}
	var start []string
	for _, dc := range dcs {
		if f.state[dc] == nil {
			start = append(start, dc)
		}
	}
	f.mu.Unlock()
	for _, c := range stop {
		c()
	}
	for _, dc := range start {
		st := &dcState{cancel: func() {}}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			return
		}
		f.state[dc] = st
		f.mu.Unlock()
		cancel := f.s.WatchDatacenter(f.service, dc, discovery.WatcherFuncs{
			Update:        func(s *discovery.Snapshot) { f.on(dc, st, s, nil, false) },
			AmbientError:  func(err error) { f.on(dc, st, nil, err, false) },
			ResourceError: func(err error) { f.on(dc, st, nil, err, true) },
		})
		f.mu.Lock()
		st.cancel = cancel
		f.mu.Unlock()
	}
	if redeliver {
		f.on("", nil, nil, nil, false)
	}
}

// on records one datacenter's news (st nil: only redeliver) and passes the
// merged result on.
func (f *FailoverWatch) on(dc string, st *dcState, snap *discovery.Snapshot, err error, gone bool) {
	f.deliver.Lock()
	defer f.deliver.Unlock()
	f.mu.Lock()
	if f.closed || (st != nil && f.state[dc] != st) {
		f.mu.Unlock()
		return
	}
	if st != nil {
		switch {
		case snap != nil:
			st.snap, st.err = snap, nil
		case gone:
			st.snap, st.err = nil, err
		default:
			st.err = err
		}
	}
	merged := f.mergeLocked()
	f.mu.Unlock()
	if err != nil && !gone {
		f.w.OnAmbientError(fmt.Errorf("%w%s", err, failoverNote(dc)))
		return
	}
	if merged != nil {
		f.w.OnUpdate(merged)
	}
}

func failoverNote(dc string) string {
	if dc == "" {
		return ""
	}
	return " (failover datacenter " + dc + ")"
}

// mergeLocked builds the snapshot of every datacenter's instances with
// their priorities; nil while no datacenter has answered. A snapshot equal
// to the last one is the last one (a confirmation). The caller holds mu.
func (f *FailoverWatch) mergeLocked() *discovery.Snapshot {
	var eps []discovery.Endpoint
	seen := map[string]bool{}
	have := false
	for prio, dc := range f.dcs {
		st := f.state[dc]
		if st == nil || st.snap == nil {
			continue
		}
		have = true
		for _, ep := range st.snap.Endpoints {
			if seen[ep.Address] {
				continue
			}
			seen[ep.Address] = true
			ep.Priority = uint32(prio)
			if ep.Region == "" {
				ep.Region = dc
			}
			eps = append(eps, ep)
		}
	}
	if !have {
		return nil
	}
	snap, err := discovery.NewSnapshot(f.service, f.version+1, eps)
	if err != nil { // every part was a valid snapshot and addresses are distinct
		return f.last
	}
	if f.last.Equal(snap) {
		return f.last
	}
	f.version++
	f.last = snap
	return snap
}

// NodeZone returns the node meta "zone" of the agent the source talks to
// ("" when the node has none).
func (s *Source) NodeZone(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	defer cancel()
	var self struct {
		Meta map[string]string
	}
	if _, err := s.client.Raw().Query("/v1/agent/self", &self, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return "", err
	}
	return self.Meta["zone"], nil
}
