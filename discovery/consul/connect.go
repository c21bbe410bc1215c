package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/mtls"
)

// ErrConnectDisabled is the agent answering that Connect is off.
var ErrConnectDisabled = errors.New("connect disabled")

// Connect keeps a service's mesh identity from the local agent's Connect
// CA: the leaf (/v1/agent/connect/ca/leaf/SERVICE) and the roots
// (/v1/agent/connect/ca/roots) into a mtls.Store, and the intentions whose
// destination is the service into a mtls.Authorizer, each by its own
// blocking query, so renewals, CA rotations and intention changes arrive by
// themselves. When the agent cannot be reached the last of each stays in
// force.
type Connect struct {
	s       *Source
	service string
	store   *mtls.Store
	authz   *mtls.Authorizer
	log     *slog.Logger

	mu    sync.Mutex
	roots *api.CARootList
	leaf  *api.LeafCert

	failures atomic.Uint64 // failed queries, all three
}

// Failures is how many of the Connect queries have failed so far.
func (c *Connect) Failures() uint64 { return c.failures.Load() }

// connectDisabled reports whether err is the agent saying Connect is off.
func connectDisabled(err error) bool {
	if err == nil {
		return false
	}
	m := err.Error()
	return strings.Contains(m, "Connect must be enabled") || strings.Contains(m, "Connect is not enabled") ||
		strings.Contains(m, "connect is disabled") || strings.Contains(m, "Connect CA is not enabled")
}

// StartConnect checks that the agent has Connect on (an agent that cannot
// be reached is not an error: the queries retry) and starts the leaf, roots
// and intentions queries for service; they stop with the source. authz may
// be nil (no intentions kept).
func (s *Source) StartConnect(service string, store *mtls.Store, authz *mtls.Authorizer) (*Connect, error) {
	c := &Connect{s: s, service: service, store: store, authz: authz, log: s.log.With("connect", service)}
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.RequestTimeout)
	_, _, err := s.client.Agent().ConnectCARoots((&api.QueryOptions{}).WithContext(ctx))
	cancel()
	if connectDisabled(err) {
		return nil, fmt.Errorf("%w: Connect is not enabled on the Consul agent at %s (%v)", ErrConnectDisabled, s.cfg.Address, err)
	}
	if err != nil {
		c.log.Warn("consul connect: roots query failed; retrying", "err", err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errors.New("consul: source closed")
	}
	n := 2
	if authz != nil {
		n = 3
	}
	s.wg.Add(n)
	s.mu.Unlock()
	loop := func(what string, query func(context.Context, uint64) (uint64, error)) {
		defer s.wg.Done()
		s.blockingLoop(s.ctx, s.log, what, query)
	}
	go loop("connect roots", c.counted(c.queryRoots))
	go loop("connect leaf "+service, c.counted(c.queryLeaf))
	if authz != nil {
		go loop("intentions "+service, c.counted(c.queryIntentions))
	}
	return c, nil
}

// blockingLoop runs query (a blocking query from index, returning the next
// index) until ctx ends, with the source's pacing and backoff: at least
// MinQueryInterval between queries, the index reset to 0 after a failure,
// the first failure of a run logged as a warning (the last answer stays in
// effect) and the recovery as info.
func (s *Source) blockingLoop(ctx context.Context, log *slog.Logger, what string, query func(ctx context.Context, index uint64) (uint64, error)) {
	var (
		index     uint64
		failures  int
		lastStart time.Time
		retryAt   time.Time
	)
	for {
		if !sleepCtx(ctx, pace(time.Now(), lastStart, retryAt, s.opts.MinQueryInterval)) {
			return
		}
		lastStart = time.Now()
		qctx, cancel := context.WithTimeout(ctx, queryTimeout(index, s.cfg.WaitTime, s.opts.RequestTimeout))
		got, err := query(qctx, index)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			index = 0
			retryAt = time.Now().Add(s.bo.delay(failures))
			if failures == 1 {
				log.Warn("consul query failed; keeping the last answer", "query", what, "err", err)
			}
			continue
		}
		if failures > 0 {
			log.Info("consul query answered again", "query", what, "failed_queries", failures)
		}
		failures, retryAt = 0, time.Time{}
		index = nextIndex(index, got)
	}
}

// counted counts query's failures.
func (c *Connect) counted(query func(context.Context, uint64) (uint64, error)) func(context.Context, uint64) (uint64, error) {
	return func(ctx context.Context, index uint64) (uint64, error) {
		got, err := query(ctx, index)
		if err != nil && ctx.Err() == nil {
			c.failures.Add(1)
		}
		return got, err
	}
}

func (c *Connect) queryOptions(ctx context.Context, index uint64) *api.QueryOptions {
	q := &api.QueryOptions{WaitIndex: index, WaitTime: c.s.cfg.WaitTime}
	return q.WithContext(ctx)
}

func (c *Connect) queryRoots(ctx context.Context, index uint64) (uint64, error) {
	roots, meta, err := c.s.client.Agent().ConnectCARoots(c.queryOptions(ctx, index))
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.roots = roots
	c.mu.Unlock()
	c.apply()
	return meta.LastIndex, nil
}

func (c *Connect) queryLeaf(ctx context.Context, index uint64) (uint64, error) {
	leaf, meta, err := c.s.client.Agent().ConnectCALeaf(c.service, c.queryOptions(ctx, index))
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.leaf = leaf
	c.mu.Unlock()
	c.apply()
	return meta.LastIndex, nil
}

// apply builds the material from the latest leaf and roots and hands it to
// the store when it changed and verifies (a leaf of a root not listed yet
// waits for the roots answer).
func (c *Connect) apply() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leaf == nil || c.roots == nil {
		return
	}
	roots := make([]mtls.Root, 0, len(c.roots.Roots))
	for _, r := range c.roots.Roots {
		parsed, err := mtls.ParseRoots([]byte(r.RootCertPEM))
		if err != nil {
			c.log.Error("consul connect: unreadable root", "root", r.ID, "err", err)
			continue
		}
		roots = append(roots, mtls.Root{ID: r.ID, Active: r.Active, Cert: parsed[0].Cert})
	}
	if cur := c.store.Current(); cur != nil && cur.Serial() == c.leaf.SerialNumber && sameRoots(cur.Roots, roots) {
		return
	}
	m, err := mtls.NewMaterial([]byte(c.leaf.CertPEM), []byte(c.leaf.PrivateKeyPEM), roots, c.roots.TrustDomain)
	if err != nil {
		c.log.Warn("consul connect: leaf not usable yet; keeping the previous one", "serial", c.leaf.SerialNumber, "err", err)
		return
	}
	c.store.Set(m)
	c.log.Info("consul connect: identity updated", "identity", m.ID.String(), "serial", m.Serial(),
		"not_after", m.NotAfter(), "roots", len(roots), "active_root", c.roots.ActiveRootID)
}

func sameRoots(a, b []mtls.Root) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ID != b[i].ID || a[i].Active != b[i].Active || !a[i].Cert.Equal(b[i].Cert) {
			return false
		}
	}
	return true
}

func (c *Connect) queryIntentions(ctx context.Context, index uint64) (uint64, error) {
	m, meta, err := c.s.client.Connect().IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination, Names: []string{c.service}}, c.queryOptions(ctx, index))
	if err != nil {
		return 0, err
	}
	p, err := policyOf(c.service, m[c.service])
	if err != nil {
		return 0, err
	}
	// The default is asked with an identity of our trust domain: wait for
	// the first leaf (it comes with the roots, at once on a healthy agent).
	select {
	case <-c.store.Ready():
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	p.DefaultAllow = c.defaultAllow()
	c.authz.Set(p)
	c.log.Debug("consul connect: intentions", "count", len(p.Intentions), "default_allow", p.DefaultAllow)
	return meta.LastIndex, nil
}

// defaultAllow asks the agent how it decides a source that no intention
// names (its ACL default policy): it authorizes an identity of a service
// name no intention can name. A wildcard intention makes the answer moot
// (it matches first). When the agent cannot answer, the previous default
// (or deny) stays. The probe identity is ours with another service name.
func (c *Connect) defaultAllow() bool {
	prev := false
	if p := c.authz.Policy(); p != nil {
		prev = p.DefaultAllow
	}
	m := c.store.Current()
	if m == nil {
		return prev
	}
	own := m.ID.String()
	i := strings.LastIndex(own, "/svc/")
	if i < 0 {
		return prev
	}
	res, err := c.s.client.Agent().ConnectAuthorize(&api.AgentAuthorizeParams{
		Target:           c.service,
		ClientCertURI:    own[:i] + "/svc/sidemesh-default-intention-probe",
		ClientCertSerial: "00",
	})
	if err != nil {
		c.log.Debug("consul connect: default intention unknown", "err", err)
		return prev
	}
	c.log.Debug("consul connect: default intention", "authorized", res.Authorized, "reason", res.Reason)
	return res.Authorized
}

// policyOf maps Consul's intentions (highest precedence first) to a
// policy.
func policyOf(dest string, ins []*api.Intention) (*mtls.Policy, error) {
	p := &mtls.Policy{Destination: dest}
	for _, in := range ins {
		if in == nil {
			continue
		}
		mi := mtls.Intention{Source: in.SourceName, Action: string(in.Action)}
		for i, perm := range in.Permissions {
			if perm == nil {
				continue
			}
			mp := mtls.Permission{Action: string(perm.Action)}
			if h := perm.HTTP; h != nil {
				mp.PathExact, mp.PathPrefix, mp.Methods = h.PathExact, h.PathPrefix, h.Methods
				if h.PathRegex != "" {
					re, err := regexp.Compile(h.PathRegex)
					if err != nil {
						return nil, fmt.Errorf("intention %s → %s permission %d: PathRegex %q: %w", in.SourceName, dest, i, h.PathRegex, err)
					}
					mp.PathRegex = re
				}
				for _, hh := range h.Header {
					hm := mtls.HeaderMatch{Name: hh.Name, Present: hh.Present, Exact: hh.Exact, Prefix: hh.Prefix, Suffix: hh.Suffix, Invert: hh.Invert}
					if hh.Regex != "" {
						re, err := regexp.Compile(hh.Regex)
						if err != nil {
							return nil, fmt.Errorf("intention %s → %s permission %d: header %s Regex %q: %w", in.SourceName, dest, i, hh.Name, hh.Regex, err)
						}
						hm.Regex = re
					}
					mp.Headers = append(mp.Headers, hm)
				}
			}
			mi.Permissions = append(mi.Permissions, mp)
		}
		p.Intentions = append(p.Intentions, mi)
	}
	return p, nil
}
