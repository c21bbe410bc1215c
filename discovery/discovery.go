package discovery

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Errors returned by sources. Wrap them with %w and context.
var (
	ErrNotFound     = errors.New("discovery: service not found")
	ErrInvalid      = errors.New("discovery: invalid endpoint data")
	ErrUnavailable  = errors.New("discovery: source unavailable")
	ErrSourceClosed = errors.New("discovery: source closed")
)

// Catalog is implemented by sources that can list every service they know,
// so that a fleet control plane serves them all.
type Catalog interface {
	// WatchServices calls f with the sorted names of every service the
	// source knows: at once when they are known, then after each change
	// of the set, one call at a time, until cancel.
	WatchServices(f func(services []string)) (cancel func())
}

// Health is the health an endpoint has according to its source (not the
// sidecar's own view, which adds ejections and active health checks).
type Health uint8

const (
	// Healthy endpoints take traffic.
	Healthy Health = iota
	// Degraded endpoints (Consul "warning") take traffic at their degraded weight.
	Degraded
	// Unhealthy endpoints are known but must not take traffic (outside panic mode).
	Unhealthy
	// Draining endpoints finish what they have and take no new traffic.
	Draining
)

func (h Health) String() string {
	switch h {
	case Healthy:
		return "healthy"
	case Degraded:
		return "degraded"
	case Unhealthy:
		return "unhealthy"
	case Draining:
		return "draining"
	}
	return fmt.Sprintf("health(%d)", uint8(h))
}

// MaxWeight is the largest weight an endpoint may carry (Envoy's limit for
// load_balancing_weight is 2^32-1; we keep the sum of a large cluster inside
// uint64 arithmetic without care).
const MaxWeight = 1 << 24

// Endpoint is one instance of a service.
type Endpoint struct {
	Address string            `json:"address"` // host:port
	Weight  uint32            `json:"weight"`  // >= 1
	Health  Health            `json:"-"`
	Meta    map[string]string `json:"meta,omitempty"`
	// MTLS marks an instance registered by a sidecar with mTLS on (Consul
	// service meta or EDS metadata MetaMTLS = "true"): clients originate
	// mTLS to it and verify its identity.
	MTLS bool `json:"mtls,omitempty"`
	// Priority is the endpoint's priority level (0 = preferred; Envoy's
	// LocalityLbEndpoints.priority): higher levels take traffic only as
	// the lower ones lose healthy capacity.
	Priority uint32 `json:"priority,omitempty"`
	// Region and Zone are the endpoint's locality (Envoy's Locality);
	// Region is the datacenter for Consul endpoints.
	Region string `json:"region,omitempty"`
	Zone   string `json:"zone,omitempty"`
}

// MetaMTLS is the endpoint meta key (Consul service meta, EDS endpoint
// metadata) that marks a mesh instance with mTLS on, value "true".
const MetaMTLS = "sidemesh_mtls"

// Snapshot is an immutable, versioned view of one service's endpoints. Once
// published, neither the snapshot nor its slice is ever modified.
type Snapshot struct {
	Service   string
	Version   uint64 // strictly increases per service within one source
	Endpoints []Endpoint
	// Received is when the source produced this snapshot.
	Received time.Time
}

// NewSnapshot validates and sorts endpoints (by address) and returns a
// snapshot. Duplicate addresses, empty addresses and weights outside
// 1..MaxWeight are errors that name the endpoint.
func NewSnapshot(service string, version uint64, eps []Endpoint) (*Snapshot, error) {
	out := make([]Endpoint, len(eps))
	copy(out, eps)
	seen := make(map[string]bool, len(out))
	for i, ep := range out {
		if err := ValidateEndpoint(ep); err != nil {
			return nil, fmt.Errorf("%w: service %q endpoint %d: %v", ErrInvalid, service, i, err)
		}
		if seen[ep.Address] {
			return nil, fmt.Errorf("%w: service %q: duplicate endpoint %s", ErrInvalid, service, ep.Address)
		}
		seen[ep.Address] = true
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return &Snapshot{Service: service, Version: version, Endpoints: out, Received: time.Now()}, nil
}

// ValidateEndpoint checks one endpoint.
func ValidateEndpoint(ep Endpoint) error {
	if ep.Address == "" {
		return errors.New("address is empty")
	}
	i := strings.LastIndexByte(ep.Address, ':')
	if i <= 0 || i == len(ep.Address)-1 {
		return fmt.Errorf("address %q is not host:port", ep.Address)
	}
	if ep.Weight < 1 || ep.Weight > MaxWeight {
		return fmt.Errorf("endpoint %s: weight %d must be an integer in 1..%d", ep.Address, ep.Weight, MaxWeight)
	}
	return nil
}

// Equal reports whether two snapshots carry the same endpoints (version and
// time aside).
func (s *Snapshot) Equal(o *Snapshot) bool {
	if s == nil || o == nil {
		return s == o
	}
	if len(s.Endpoints) != len(o.Endpoints) {
		return false
	}
	for i := range s.Endpoints {
		a, b := s.Endpoints[i], o.Endpoints[i]
		if a.Address != b.Address || a.Weight != b.Weight || a.Health != b.Health || a.MTLS != b.MTLS || len(a.Meta) != len(b.Meta) ||
			a.Priority != b.Priority || a.Region != b.Region || a.Zone != b.Zone {
			return false
		}
		for k, v := range a.Meta {
			if b.Meta[k] != v {
				return false
			}
		}
	}
	return true
}

// Watcher receives the news about one watched service.
//
// Concurrency contract: a source calls the methods of one Watcher from one
// goroutine at a time (never concurrently), in order. A method must not
// block for long: it should swap state and return.
type Watcher interface {
	// OnUpdate delivers a snapshot. The same snapshot (same Version) may be
	// delivered again to confirm that the source still vouches for it; the
	// watcher then only refreshes its notion of staleness.
	OnUpdate(s *Snapshot)
	// OnResourceError says the service's data is gone or invalid: drop it.
	OnResourceError(err error)
	// OnAmbientError says the source is in trouble: keep the last snapshot.
	OnAmbientError(err error)
}

// Source produces snapshots for the services it is asked to watch.
//
// Watch may be called any number of times, from any goroutine, for the same
// or different services; each call registers an independent watcher, which
// gets the current snapshot (if any) soon after. cancel stops delivery to that
// watcher; after it returns no further callbacks are made to it.
// Close stops the source and all its goroutines.
type Source interface {
	Watch(service string, w Watcher) (cancel func())
	Close() error
}

// WatcherFuncs adapts functions to a Watcher; nil functions are ignored.
type WatcherFuncs struct {
	Update        func(*Snapshot)
	ResourceError func(error)
	AmbientError  func(error)
}

var _ Watcher = WatcherFuncs{}

func (f WatcherFuncs) OnUpdate(s *Snapshot) {
	if f.Update != nil {
		f.Update(s)
	}
}

func (f WatcherFuncs) OnResourceError(err error) {
	if f.ResourceError != nil {
		f.ResourceError(err)
	}
}

func (f WatcherFuncs) OnAmbientError(err error) {
	if f.AmbientError != nil {
		f.AmbientError(err)
	}
}
