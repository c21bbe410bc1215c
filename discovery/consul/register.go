package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Registrar defaults.
const (
	// DefaultResyncInterval is the wait of the blocking query on the
	// agent's copy of the registration; an agent restart ends it at once.
	DefaultResyncInterval = 30 * time.Second
	// DefaultMinResyncInterval spaces two looks at the agent.
	DefaultMinResyncInterval = time.Second
	// DefaultDeregisterTimeout bounds the deregistration on shutdown.
	DefaultDeregisterTimeout = 5 * time.Second
	// DefaultCheckInterval is the check interval when Check.Interval is 0.
	DefaultCheckInterval = 10 * time.Second
)

// Check is the HTTP health check the agent runs for the registration (the
// sidecar's /ready, or the app's health_check through the sidecar).
type Check struct {
	// HTTP is the URL the agent GETs; 2xx is passing, 429 warning, anything
	// else critical (Consul's rules).
	HTTP     string
	Interval time.Duration // DefaultCheckInterval when 0
	Timeout  time.Duration // 0: Consul's default (10s)
	// DeregisterCriticalServiceAfter, when > 0, lets the agent remove an
	// instance whose check stayed critical that long (a sidecar that died
	// without deregistering).
	DeregisterCriticalServiceAfter time.Duration
}

// Registration is what this instance registers: the inbound listener of the
// sidecar under the service's name.
type Registration struct {
	ID   string // the node id
	Name string // the service name
	// Address is the inbound listener's host. "" or a wildcard (0.0.0.0,
	// ::) registers no service address, so Consul hands out the node's.
	Address string
	Port    int // inbound listener port
	// Weight is Weights.Passing (1..MaxWeight); Weights.Warning is 1,
	// Consul's default.
	Weight int
	Tags   []string
	Meta   map[string]string // e.g. the sidemesh version
	Check  *Check            // nil: no check
}

// Validate checks the registration; path names its config key.
func (r *Registration) Validate(path string) error {
	switch {
	case r.ID == "":
		return fmt.Errorf("%w: node: must not be empty (it is the Consul service ID of %s)", ErrConfig, path)
	case r.Name == "":
		return fmt.Errorf("%w: %s.name: must not be empty", ErrConfig, path)
	case r.Port < 1 || r.Port > 65535:
		return fmt.Errorf("%w: %s.inbound: port %d must be in 1..65535", ErrConfig, path, r.Port)
	case r.Weight < 1 || r.Weight > MaxWeight:
		return fmt.Errorf("%w: %s.weight: %d must be an integer in 1..%d (Consul's weight range for Envoy)", ErrConfig, path, r.Weight, MaxWeight)
	}
	if c := r.Check; c != nil {
		switch {
		case c.HTTP == "":
			return fmt.Errorf("%w: %s.health_check.http: must not be empty", ErrConfig, path)
		case c.Interval < 0:
			return fmt.Errorf("%w: %s.health_check.interval: %q must be > 0", ErrConfig, path, c.Interval)
		case c.Timeout < 0:
			return fmt.Errorf("%w: %s.health_check.timeout: %q must be > 0", ErrConfig, path, c.Timeout)
		case c.DeregisterCriticalServiceAfter < 0:
			return fmt.Errorf("%w: %s.health_check.deregister_critical_service_after: %q must be >= 0", ErrConfig, path, c.DeregisterCriticalServiceAfter)
		}
	}
	return nil
}

func (r *Registration) agentRegistration() *api.AgentServiceRegistration {
	addr := r.Address
	if ip := net.ParseIP(addr); ip != nil && ip.IsUnspecified() {
		addr = "" // a wildcard listener: other nodes reach us at the node address
	}
	reg := &api.AgentServiceRegistration{
		ID:      r.ID,
		Name:    r.Name,
		Address: addr,
		Port:    r.Port,
		Tags:    r.Tags,
		Meta:    r.Meta,
		Weights: &api.AgentWeights{Passing: r.Weight, Warning: 1},
	}
	if c := r.Check; c != nil {
		interval := c.Interval
		if interval == 0 {
			interval = DefaultCheckInterval
		}
		ac := &api.AgentServiceCheck{
			Name:     "sidemesh: " + r.Name + " ready",
			HTTP:     c.HTTP,
			Interval: interval.String(),
		}
		if c.Timeout > 0 {
			ac.Timeout = c.Timeout.String()
		}
		if c.DeregisterCriticalServiceAfter > 0 {
			ac.DeregisterCriticalServiceAfter = c.DeregisterCriticalServiceAfter.String()
		}
		reg.Check = ac
	}
	return reg
}

// RegistrarOptions tune a Registrar. Zero values take the defaults.
type RegistrarOptions struct {
	Logger            *slog.Logger
	ResyncInterval    time.Duration // DefaultResyncInterval
	MinResyncInterval time.Duration // DefaultMinResyncInterval
	BaseBackoff       time.Duration // DefaultBaseBackoff
	MaxBackoff        time.Duration // DefaultMaxBackoff
	DeregisterTimeout time.Duration // DefaultDeregisterTimeout
	// Transport, when set, carries the HTTP requests (tests).
	Transport http.RoundTripper
}

// RegistrarStats describe the registration, for /clusters and metrics.
type RegistrarStats struct {
	// Registered is true from a successful registration until the agent
	// is found to have lost it.
	Registered          bool
	Registrations       uint64 // successful register calls (> 1: restored after a loss)
	LastRegistered      time.Time
	LastError           error
	ConsecutiveFailures int
	FailuresTotal       uint64
}

// Registrar keeps this instance registered with the local Consul agent
// while Run runs, and deregisters it when Run's context ends.
//
// The agent's copy is watched with a blocking query on
// /v1/agent/service/<id> (by content hash): when the agent restarts (a
// -dev agent, or one whose state was lost) the query fails or answers 404,
// and the instance is registered again (anti-entropy from our side).
//
// Concurrency: Run is called once; Stats may be called from any goroutine.
type Registrar struct {
	reg    Registration
	opts   RegistrarOptions
	log    *slog.Logger
	client *api.Client
	tr     *http.Transport
	bo     backoff

	mu    sync.Mutex
	stats RegistrarStats
}

// NewRegistrar validates cfg and reg and returns a registrar; it does not
// contact the agent until Run.
func NewRegistrar(cfg Config, reg Registration, opts RegistrarOptions) (*Registrar, error) {
	cfg.SetDefaults()
	if err := cfg.Validate("discovery.consul"); err != nil {
		return nil, err
	}
	if err := reg.Validate("service"); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = DefaultResyncInterval
	}
	if opts.MinResyncInterval <= 0 {
		opts.MinResyncInterval = DefaultMinResyncInterval
	}
	if opts.BaseBackoff <= 0 {
		opts.BaseBackoff = DefaultBaseBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	if opts.DeregisterTimeout <= 0 {
		opts.DeregisterTimeout = DefaultDeregisterTimeout
	}
	client, tr, err := newClient(cfg, opts.Transport)
	if err != nil {
		return nil, err
	}
	return &Registrar{
		reg:    reg,
		opts:   opts,
		log:    opts.Logger.With("component", "discovery.consul.registrar", "service", reg.Name, "id", reg.ID),
		client: client,
		tr:     tr,
		bo:     backoff{base: opts.BaseBackoff, max: opts.MaxBackoff},
	}, nil
}

// Stats returns the registration's state.
func (r *Registrar) Stats() RegistrarStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// Run registers the instance, keeps it registered until ctx ends, then
// deregisters it. It returns nil after a clean deregistration, else an
// error wrapping ErrRegistration.
func (r *Registrar) Run(ctx context.Context) error {
	defer func() {
		if r.tr != nil {
			r.tr.CloseIdleConnections()
		}
	}()
	var (
		registered bool
		hash       string
		failures   int
		lastStart  time.Time
		retryAt    time.Time
	)
	for {
		if !sleepCtx(ctx, pace(time.Now(), lastStart, retryAt, r.opts.MinResyncInterval)) {
			break
		}
		lastStart = time.Now()
		var err error
		if !registered {
			err = r.register(ctx)
			if err == nil {
				registered, hash = true, ""
			}
		} else {
			var lost bool
			lost, hash, err = r.look(ctx, hash)
			if lost {
				r.log.Warn("the agent lost the registration (restarted?); registering again")
				registered = false
				r.setRegistered(false)
				continue
			}
		}
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			failures++
			hash = ""
			retryAt = time.Now().Add(r.bo.delay(failures))
			r.recordFailure(err, failures)
			if failures == 1 {
				r.log.Warn("consul agent unavailable", "err", err)
			}
			continue
		}
		if failures > 0 {
			r.log.Info("consul agent reachable again", "failed_calls", failures)
		}
		failures, retryAt = 0, time.Time{}
	}
	return r.deregister()
}

func (r *Registrar) register(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, DefaultRequestTimeout)
	defer cancel()
	err := r.client.Agent().ServiceRegisterOpts(r.reg.agentRegistration(),
		api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	r.mu.Lock()
	r.stats.Registered = true
	r.stats.Registrations++
	r.stats.LastRegistered = time.Now()
	r.stats.ConsecutiveFailures = 0
	r.mu.Unlock()
	r.log.Info("registered with consul", "address", r.reg.Address, "port", r.reg.Port, "weight", r.reg.Weight)
	return nil
}

// look waits on the agent's copy of the registration (blocking on its
// content hash). lost is true when the agent no longer has it.
func (r *Registrar) look(ctx context.Context, hash string) (lost bool, newHash string, err error) {
	wait := r.opts.ResyncInterval
	ctx, cancel := context.WithTimeout(ctx, wait+wait/16+DefaultRequestTimeout)
	defer cancel()
	q := &api.QueryOptions{WaitHash: hash, WaitTime: wait}
	_, meta, err := r.client.Agent().Service(r.reg.ID, q.WithContext(ctx))
	var se api.StatusError
	switch {
	case errors.As(err, &se) && se.Code == http.StatusNotFound:
		return true, "", nil
	case err != nil:
		return false, "", fmt.Errorf("look up registration: %w", err)
	}
	return false, meta.LastContentHash, nil
}

func (r *Registrar) deregister() error {
	ctx, cancel := context.WithTimeout(context.Background(), r.opts.DeregisterTimeout)
	defer cancel()
	err := r.client.Agent().ServiceDeregisterOpts(r.reg.ID, (&api.QueryOptions{}).WithContext(ctx))
	var se api.StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound {
		err = nil // already gone
	}
	r.setRegistered(false)
	if err != nil {
		r.log.Warn("deregistration failed", "err", err)
		return fmt.Errorf("%w: deregister %q: %w", ErrRegistration, r.reg.ID, err)
	}
	r.log.Info("deregistered from consul")
	return nil
}

func (r *Registrar) setRegistered(v bool) {
	r.mu.Lock()
	r.stats.Registered = v
	r.mu.Unlock()
}

func (r *Registrar) recordFailure(err error, failures int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.LastError = err
	r.stats.ConsecutiveFailures = failures
	r.stats.FailuresTotal++
}

// sleepCtx waits d; it returns false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
