package discovery

import "sync"

// Fanout keeps, per service, the watchers and the last news, and delivers
// news to every watcher of that service. Sources embed it so that they only
// have to Publish. Callbacks run under a per-service lock, which makes the
// delivery to one watcher serial and lets cancel promise that no callback
// follows it; a watcher must therefore not call Watch or cancel from inside
// a callback.
type Fanout struct {
	mu       sync.Mutex
	services map[string]*fanService
	// OnFirstWatch, when set, is called (outside locks) the first time a
	// service is watched, so a source can start fetching it.
	OnFirstWatch func(service string)
}

type fanService struct {
	mu       sync.Mutex
	watchers map[int]Watcher
	next     int
	last     *Snapshot
	lastErr  error // resource error in effect (nil when last is good)
}

func (f *Fanout) service(name string) (*fanService, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.services == nil {
		f.services = make(map[string]*fanService)
	}
	s, ok := f.services[name]
	if !ok {
		s = &fanService{watchers: make(map[int]Watcher)}
		f.services[name] = s
	}
	return s, !ok
}

// Watch implements Source.Watch.
func (f *Fanout) Watch(service string, w Watcher) (cancel func()) {
	s, first := f.service(service)
	s.mu.Lock()
	id := s.next
	s.next++
	s.watchers[id] = w
	if s.last != nil {
		w.OnUpdate(s.last)
	} else if s.lastErr != nil {
		w.OnResourceError(s.lastErr)
	}
	s.mu.Unlock()
	if first && f.OnFirstWatch != nil {
		f.OnFirstWatch(service)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.watchers, id)
			s.mu.Unlock()
		})
	}
}

// Services lists the services watched so far.
func (f *Fanout) Services() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.services))
	for k := range f.services {
		out = append(out, k)
	}
	return out
}

// Last returns the last snapshot published for service, or nil.
func (f *Fanout) Last(service string) *Snapshot {
	s, _ := f.service(service)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Publish delivers a snapshot to every watcher of snap.Service.
func (f *Fanout) Publish(snap *Snapshot) {
	s, _ := f.service(snap.Service)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last, s.lastErr = snap, nil
	for _, w := range s.watchers {
		w.OnUpdate(snap)
	}
}

// ResourceError drops the service's data and tells its watchers.
func (f *Fanout) ResourceError(service string, err error) {
	s, _ := f.service(service)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last, s.lastErr = nil, err
	for _, w := range s.watchers {
		w.OnResourceError(err)
	}
}

// AmbientError tells the service's watchers that the source is in trouble.
func (f *Fanout) AmbientError(service string, err error) {
	s, _ := f.service(service)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.watchers {
		w.OnAmbientError(err)
	}
}
