package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/internal/confyaml"
)

// ErrParse wraps every problem found in an endpoints file.
var ErrParse = errors.New("file: bad endpoints file")

// MaxPriority is the highest priority level an endpoint may name (Envoy
// allows any uint32; a bound keeps a typo from creating a level nobody
// meant).
const MaxPriority = 127

// DefaultPollInterval is how often the file is checked for changes.
const DefaultPollInterval = 200 * time.Millisecond

type fileEndpoint struct {
	Address string `yaml:"address"`
	Weight  *int64 `yaml:"weight"`
	// Priority is the endpoint's priority level (0 = preferred).
	Priority *int64 `yaml:"priority"`
	// Zone is the endpoint's zone, for zone-aware routing.
	Zone string        `yaml:"zone"`
	Line confyaml.Line `yaml:"-"`
}

type fileDoc struct {
	Services map[string][]fileEndpoint `yaml:"services"`
}

// Parse decodes an endpoints file. Anchors, aliases and merge keys resolve
// (within confyaml's expansion bound); ${VAR} is not expanded here. Errors
// name the file position and the endpoint (service and index) at fault.
func Parse(name string, data []byte) (map[string][]discovery.Endpoint, error) {
	services, ok := scan(data)
	if !ok {
		var err error
		if services, err = decode(name, data); err != nil {
			return nil, err
		}
	}
	return validate(name, services)
}

// decode reads an endpoints file with the general YAML decoder.
func decode(name string, data []byte) (map[string][]fileEndpoint, error) {
	var doc fileDoc
	res, err := confyaml.Decode(data, &doc, confyaml.Options{})
	if errors.Is(err, confyaml.ErrEmpty) {
		return nil, fmt.Errorf("%w: %s: empty document (want a `services:` map)", ErrParse, name)
	}
	var ce *confyaml.Error
	if errors.As(err, &ce) {
		where := name
		if ce.Line > 0 {
			where = fmt.Sprintf("%s:%d", name, ce.Line)
		}
		problem := ce.Problem
		if ce.Problem == "unknown key" {
			problem = "unknown key " + hint(ce.Path)
		}
		if ce.Path != "" {
			problem = ce.Path + ": " + problem
		}
		return nil, fmt.Errorf("%w: %s: %s", ErrParse, where, problem)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrParse, name, err)
	}
	if !slices.Contains(res.Keys(""), "services") {
		return nil, fmt.Errorf("%w: %s: missing key `services`", ErrParse, name)
	}
	return doc.Services, nil
}

// validate checks the endpoints and makes them discovery's.
func validate(name string, services map[string][]fileEndpoint) (map[string][]discovery.Endpoint, error) {
	svcs := make([]string, 0, len(services))
	for svc := range services {
		svcs = append(svcs, svc)
	}
	sort.Strings(svcs) // the first error is the same on every run
	out := make(map[string][]discovery.Endpoint, len(svcs))
	for _, svc := range svcs {
		list := services[svc]
		eps := make([]discovery.Endpoint, 0, len(list))
		seen := make(map[string]int)
		for n, fe := range list {
			w := int64(1)
			if fe.Weight != nil {
				w = *fe.Weight
			}
			if w < 1 || w > discovery.MaxWeight {
				return nil, fmt.Errorf("%w: %s:%d: services.%s[%d] (%s): weight %d must be an integer in 1..%d",
					ErrParse, name, fe.Line, svc, n, fe.Address, w, discovery.MaxWeight)
			}
			var prio int64
			if fe.Priority != nil {
				prio = *fe.Priority
			}
			if prio < 0 || prio > MaxPriority {
				return nil, fmt.Errorf("%w: %s:%d: services.%s[%d].priority (%s): %d must be an integer in 0..%d",
					ErrParse, name, fe.Line, svc, n, fe.Address, prio, MaxPriority)
			}
			ep := discovery.Endpoint{Address: fe.Address, Weight: uint32(w), Priority: uint32(prio), Zone: fe.Zone}
			if err := discovery.ValidateEndpoint(ep); err != nil {
				return nil, fmt.Errorf("%w: %s:%d: services.%s[%d]: %v", ErrParse, name, fe.Line, svc, n, err)
			}
			if prev, dup := seen[fe.Address]; dup {
				return nil, fmt.Errorf("%w: %s:%d: services.%s[%d]: address %s repeats services.%s[%d]",
					ErrParse, name, fe.Line, svc, n, fe.Address, svc, prev)
			}
			seen[fe.Address] = n
			eps = append(eps, ep)
		}
		out[svc] = eps
	}
	return out, nil
}

// hint lists the keys allowed where an unknown key was found.
func hint(path string) string {
	if strings.Contains(path, ".") {
		return "(want address, weight, priority, zone)"
	}
	return "(want services)"
}

// Options tune a Source.
type Options struct {
	Logger       *slog.Logger
	PollInterval time.Duration
}

// Source watches one endpoints file.
type Source struct {
	discovery.Fanout
	path   string
	log    *slog.Logger
	every  time.Duration
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	last    []byte
	version uint64
	current map[string]*discovery.Snapshot // watched services (all with a catalog watcher)
	names   []string                       // every service of the file, sorted
	// parsed is the last good file's services, kept until the next poll
	// tick: watches that start together (a sidecar's upstreams) share one
	// parse, and services nobody watches are not kept beyond it.
	parsed   map[string][]discovery.Endpoint
	watched  map[string]int // watchers per service
	catalog  map[int]func([]string)
	nextCat  int
	lastErr  error
	loadedAt time.Time
}

var _ discovery.Catalog = (*Source)(nil)

var _ discovery.Source = (*Source)(nil)

// New reads the file once (an error here is fatal: there is no last good
// data yet) and starts watching it.
func New(path string, opts Options) (*Source, error) {
	s := &Source{path: path, log: opts.Logger, every: opts.PollInterval, current: map[string]*discovery.Snapshot{},
		watched: map[string]int{}, catalog: map[int]func([]string){}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "discovery.file", "file", path)
	if s.every <= 0 {
		s.every = DefaultPollInterval
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("file: discovery.file: %w", err)
	}
	if err := s.load(data); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	go s.poll(ctx)
	return s, nil
}

// Err returns the last parse error still in effect (nil once a good file is read).
func (s *Source) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Close stops watching.
func (s *Source) Close() error {
	s.cancel()
	<-s.done
	return nil
}

func (s *Source) poll(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(s.every)
	defer t.Stop()
	var buf []byte // the file as last read; load copies what it keeps
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		s.parsed = nil
		s.mu.Unlock()
		var err error
		if buf, err = readInto(s.path, buf); err != nil {
			s.ambient(fmt.Errorf("%w: %w", discovery.ErrUnavailable, err))
			continue
		}
		s.mu.Lock()
		same := bytes.Equal(buf, s.last)
		s.mu.Unlock()
		if same {
			continue
		}
		if err := s.load(buf); err != nil {
			s.ambient(err)
		}
	}
}

// readInto reads the file at path into buf's storage (grown when short),
// so that polling an unchanged file allocates nothing.
func readInto(path string, buf []byte) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return buf[:0], err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() < 1<<30 && int(fi.Size())+512 > cap(buf) {
		buf = make([]byte, 0, int(fi.Size())+512)
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

func (s *Source) ambient(err error) {
	s.mu.Lock()
	repeated := s.lastErr != nil && s.lastErr.Error() == err.Error()
	s.lastErr = err
	s.mu.Unlock()
	if !repeated {
		s.log.Error("endpoints file rejected; keeping the last good endpoints", "err", err)
	}
	for _, svc := range s.Services() {
		s.AmbientError(svc, err)
	}
}

// load parses data and publishes what changed.
func (s *Source) load(data []byte) error {
	parsed, err := Parse(s.path, data)
	if err != nil {
		s.mu.Lock()
		s.last = append(s.last[:0:0], data...)
		s.mu.Unlock()
		return err
	}
	names := make([]string, 0, len(parsed))
	for svc := range parsed {
		names = append(names, svc)
	}
	sort.Strings(names)
	s.mu.Lock()
	s.last = append(s.last[:0:0], data...)
	s.lastErr = nil
	s.version++
	ver := s.version
	namesChanged := !slices.Equal(names, s.names)
	s.names = names
	s.parsed = parsed
	var catalog []func([]string)
	if namesChanged {
		for _, f := range s.catalog {
			catalog = append(catalog, f)
		}
	}
	// Only the services someone watches are kept (a sidecar's upstreams);
	// with a catalog watcher (a control plane), all of them.
	keep := func(svc string) bool { return len(s.catalog) > 0 || s.watched[svc] > 0 }
	var publish []*discovery.Snapshot
	var gone []string
	for svc, eps := range parsed {
		if !keep(svc) {
			continue
		}
		snap, err := discovery.NewSnapshot(svc, ver, eps)
		if err != nil { // Parse already validated; keep the guard honest
			s.mu.Unlock()
			return fmt.Errorf("%w: %s: %v", ErrParse, s.path, err)
		}
		if old := s.current[svc]; old != nil && old.Equal(snap) {
			continue
		}
		s.current[svc] = snap
		publish = append(publish, snap)
	}
	for svc := range s.current {
		if _, ok := parsed[svc]; !ok {
			delete(s.current, svc)
			gone = append(gone, svc)
		}
	}
	s.mu.Unlock()
	for _, f := range catalog {
		f(names)
	}
	for _, snap := range publish {
		s.Publish(snap)
	}
	for _, svc := range gone {
		s.ResourceError(svc, fmt.Errorf("%w: service %q is no longer in %s", discovery.ErrNotFound, svc, s.path))
	}
	if len(publish) > 0 || len(gone) > 0 {
		s.log.Info("endpoints file loaded", "version", ver, "changed", len(publish), "removed", len(gone))
	}
	return nil
}

// Watch implements discovery.Source. A service that the file does not name
// gets a resource error at once. The first watch of a service the file
// names but that was not kept reads it from the last good file.
func (s *Source) Watch(service string, w discovery.Watcher) func() {
	s.mu.Lock()
	s.watched[service]++
	_, ok := s.current[service]
	var snap *discovery.Snapshot
	if !ok {
		snap = s.readLocked(service)
		if snap != nil {
			s.current[service] = snap
		}
	}
	s.mu.Unlock()
	if snap != nil {
		s.Publish(snap)
	}
	cancel := s.Fanout.Watch(service, w)
	if !ok && snap == nil && s.Fanout.Last(service) == nil {
		w.OnResourceError(fmt.Errorf("%w: service %q is not in %s", discovery.ErrNotFound, service, s.path))
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.watched[service]--; s.watched[service] <= 0 {
				delete(s.watched, service)
			}
		})
	}
}

// readLocked parses service's endpoints out of the last good file (nil if
// it has none).
func (s *Source) readLocked(service string) *discovery.Snapshot {
	if !slices.Contains(s.names, service) {
		return nil
	}
	if s.parsed == nil {
		parsed, err := Parse(s.path, s.last)
		if err != nil {
			return nil // the last file read was bad; the next good one publishes
		}
		s.parsed = parsed
	}
	snap, err := discovery.NewSnapshot(service, s.version, s.parsed[service])
	if err != nil {
		return nil
	}
	return snap
}

// WatchServices implements discovery.Catalog: f gets the file's services
// now and after every load that changes the set. While a catalog watcher
// exists, every service's endpoints are kept.
func (s *Source) WatchServices(f func(services []string)) (cancel func()) {
	s.mu.Lock()
	id := s.nextCat
	s.nextCat++
	s.catalog[id] = f
	names := slices.Clone(s.names)
	data := s.last
	s.mu.Unlock()
	// Keep (and publish) every service from now on.
	if parsed, err := Parse(s.path, data); err == nil {
		s.mu.Lock()
		var publish []*discovery.Snapshot
		for svc, eps := range parsed {
			if _, ok := s.current[svc]; ok {
				continue
			}
			if snap, err := discovery.NewSnapshot(svc, s.version, eps); err == nil {
				s.current[svc] = snap
				publish = append(publish, snap)
			}
		}
		s.mu.Unlock()
		for _, snap := range publish {
			s.Publish(snap)
		}
	}
	f(names)
	return func() {
		s.mu.Lock()
		delete(s.catalog, id)
		s.mu.Unlock()
	}
}
