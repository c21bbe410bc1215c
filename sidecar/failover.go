package sidecar

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/discovery/consul"
)

// failoverSource is the Consul source seen through failover datacenters:
// watching a service watches it in the local datacenter (priority 0) and
// in each failover datacenter (priority 1, 2, ...), those of the
// upstream's `failover` key or, when the file leaves the key out, of
// Consul's service-resolver config entry. The clusters and the embedded
// xDS server both watch through it, so both see the same priorities.
type failoverSource struct {
	c     *consul.Source
	fixed map[string][]string // service → failover datacenters from the file

	mu      sync.Mutex
	watches map[string][]*consul.FailoverWatch
}

var (
	_ discovery.Source  = (*failoverSource)(nil)
	_ discovery.Catalog = (*failoverSource)(nil)
)

// WatchServices implements discovery.Catalog: the services of the local
// datacenter, as the Consul source lists them.
func (f *failoverSource) WatchServices(fn func(services []string)) (cancel func()) {
	return f.c.WatchServices(fn)
}

func newFailoverSource(c *consul.Source, cfg *Config) *failoverSource {
	f := &failoverSource{c: c, fixed: map[string][]string{}, watches: map[string][]*consul.FailoverWatch{}}
	for _, u := range cfg.Upstreams {
		if u.Failover != nil {
			f.fixed[u.Service] = slices.Clone(u.Failover.Datacenters)
		}
	}
	return f
}

// Watch implements discovery.Source.
func (f *failoverSource) Watch(service string, w discovery.Watcher) (cancel func()) {
	fw := f.c.WatchFailover(service, f.fixed[service], w)
	f.mu.Lock()
	f.watches[service] = append(f.watches[service], fw)
	f.mu.Unlock()
	return func() {
		fw.Cancel()
		f.mu.Lock()
		f.watches[service] = slices.DeleteFunc(f.watches[service], func(x *consul.FailoverWatch) bool { return x == fw })
		f.mu.Unlock()
	}
}

// Close implements discovery.Source (closing the Consul source).
func (f *failoverSource) Close() error { return f.c.Close() }

// Status reports the datacenters behind service (nil when not watched).
func (f *failoverSource) Status(service string) []consul.DatacenterStatus {
	f.mu.Lock()
	var fw *consul.FailoverWatch
	if ws := f.watches[service]; len(ws) > 0 {
		fw = ws[0]
	}
	f.mu.Unlock()
	if fw == nil {
		return nil
	}
	return fw.Status()
}

// checkFailoverDatacenters compares the failover datacenters of the file
// with those Consul knows: a name Consul does not know is a config error
// naming its key. When Consul cannot answer, the check is skipped (an
// unknown datacenter then shows at runtime as an ambient error of its
// queries, as a datacenter that disappears later does).
func (s *Sidecar) checkFailoverDatacenters() error {
	if s.consul == nil {
		return nil
	}
	need := false
	for _, u := range s.cfg.Upstreams {
		need = need || u.Failover != nil
	}
	if !need {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	known, err := s.consul.Datacenters(ctx)
	if err != nil {
		s.log.Warn("cannot list Consul datacenters to check the failover datacenters; checking at runtime", "err", err)
		return nil
	}
	for i, u := range s.cfg.Upstreams {
		if u.Failover == nil {
			continue
		}
		for j, dc := range u.Failover.Datacenters {
			if !slices.Contains(known, dc) {
				return bad(fmt.Sprintf("upstreams[%d].failover.datacenters[%d]", i, j), dc,
					fmt.Sprintf("is not a datacenter Consul knows (%v)", known))
			}
		}
	}
	return nil
}

// checkStartConfig runs the checks of the config that need Consul: the
// failover datacenters' names, and the sidecar's zone for zone_aware
// upstreams (the node meta "zone" when the file leaves zone out).
func (s *Sidecar) checkStartConfig() error {
	if err := s.checkFailoverDatacenters(); err != nil {
		return err
	}
	s.zone = s.cfg.Zone
	for i, u := range s.cfg.Upstreams {
		if !u.ZoneAware || s.zone != "" {
			continue
		}
		if s.consul == nil {
			return bad(fmt.Sprintf("upstreams[%d].zone_aware", i), true, "needs the sidecar's zone: set zone")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		z, err := s.consul.NodeZone(ctx)
		cancel()
		if err != nil {
			return bad(fmt.Sprintf("upstreams[%d].zone_aware", i), true, fmt.Sprintf("needs the sidecar's zone: set zone (the Consul node meta could not be read: %v)", err))
		}
		if z == "" {
			return bad(fmt.Sprintf("upstreams[%d].zone_aware", i), true, "needs the sidecar's zone: set zone, or the Consul node meta zone")
		}
		s.zone = z
	}
	for _, c := range s.clusters {
		c.localZone = s.zone
	}
	return nil
}
