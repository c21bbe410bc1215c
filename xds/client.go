package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/upstream"
)

// TLSConfig is the optional TLS to the xDS server. With only CAFile the
// server is verified; CertFile and KeyFile add a client certificate.
type TLSConfig struct {
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
}

// ClientConfig is discovery.xds in the config file, plus the node
// identity the caller fills from the top-level config.
type ClientConfig struct {
	// Address is one host:port (a DNS name may have several addresses) or
	// a list of replicas; the client connects to one (shuffled, so that a
	// fleet spreads over the replicas) and fails over to another.
	Address AddressList `yaml:"address"`
	TLS     *TLSConfig  `yaml:"tls"`
	// NodeID is node.id (the top-level `node` key).
	NodeID string `yaml:"-"`
	// Cluster is node.cluster (the local service name; may be empty).
	Cluster string `yaml:"-"`
}

// AddressList is discovery.xds.address: one host:port or a list.
type AddressList []string

// UnmarshalYAML accepts a scalar (one address) or a sequence.
func (a *AddressList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var one string
		if err := n.Decode(&one); err != nil {
			return err
		}
		*a = AddressList{one}
		return nil
	}
	var list []string
	if err := n.Decode(&list); err != nil {
		return err
	}
	if list == nil {
		list = AddressList{} // an empty list is a config error, not "unset"
	}
	*a = list
	return nil
}

// String joins the addresses with commas.
func (a AddressList) String() string { return strings.Join(a, ",") }

// Validate checks the config; path is its key path (e.g. "discovery.xds").
func (c *ClientConfig) Validate(path string) error {
	if len(c.Address) == 0 {
		return fmt.Errorf("%w: %s.address: must not be empty (one host:port or a list)", ErrConfig, path)
	}
	for i, a := range c.Address {
		key := path + ".address"
		if len(c.Address) > 1 {
			key = fmt.Sprintf("%s.address[%d]", path, i)
		}
		if a == "" {
			return fmt.Errorf("%w: %s: must not be empty", ErrConfig, key)
		}
		if j := strings.LastIndexByte(a, ':'); j <= 0 || j == len(a)-1 {
			return fmt.Errorf("%w: %s: %q is not host:port", ErrConfig, key, a)
		}
	}
	if t := c.TLS; t != nil {
		if (t.CertFile == "") != (t.KeyFile == "") {
			return fmt.Errorf("%w: %s.tls: cert_file and key_file go together (got cert_file %q, key_file %q)", ErrConfig, path, t.CertFile, t.KeyFile)
		}
	}
	return nil
}

func (c *ClientConfig) credentials() (credentials.TransportCredentials, error) {
	if c.TLS == nil {
		return insecure.NewCredentials(), nil
	}
	cfg := &tls.Config{ServerName: c.TLS.ServerName, MinVersion: tls.VersionTLS12}
	if c.TLS.CAFile != "" {
		pem, err := os.ReadFile(c.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: tls.ca_file: %v", ErrConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: tls.ca_file: %q holds no PEM certificate", ErrConfig, c.TLS.CAFile)
		}
		cfg.RootCAs = pool
	}
	if c.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: tls.cert_file/key_file: %v", ErrConfig, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(cfg), nil
}

// ClientOptions tune a Client.
type ClientOptions struct {
	// Logger; nil discards.
	Logger *slog.Logger
	// BackoffMin and BackoffMax bound the reconnect backoff (exponential,
	// jittered): defaults 100ms and 5s.
	BackoffMin, BackoffMax time.Duration
	// DialOptions are added to the client connection's options.
	DialOptions []grpc.DialOption
	// StateOfTheWorld skips delta xDS. Without it the client opens a
	// delta ADS stream and falls back to state of the world when the
	// server answers Unimplemented.
	StateOfTheWorld bool
}

// Client is an xDS client over ADS (state of the world) and a
// discovery.Source. Watch subscribes the service's Cluster (CDS) and its
// ClusterLoadAssignment (EDS); WatchCluster delivers the cluster settings (upstream.Settings).
//
// Protocol: a good response is ACKed (version_info and nonce echoed); a
// response with an invalid resource is NACKed (the last accepted version,
// the response's nonce and an error_detail naming each bad resource and
// what is wrong); the valid resources of that response are applied and the
// invalid ones keep their last good data (gRPC's behaviour, gRFC A46). A
// Cluster missing from a CDS response after it was received is a deletion:
// its watchers get OnResourceError. A lost stream is reopened with
// jittered exponential backoff and every subscription is sent again; the
// watchers get OnAmbientError and keep their last endpoints.
//
// Concurrency: all methods are safe for concurrent use. One goroutine runs
// the stream and makes every callback; watchers must not call Watch,
// WatchCluster or a cancel func from inside a callback.
type Client struct {
	cfg  ClientConfig
	log  *slog.Logger
	conn *grpc.ClientConn
	ads  discoveryv3.AggregatedDiscoveryServiceClient
	fan  discovery.Fanout

	bmin, bmax time.Duration

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	kick   chan struct{} // subscriptions changed

	mu       sync.Mutex
	services map[string]bool   // subscribed services
	refs     map[string]int    // watches (Watch and WatchCluster) per service
	edsNames map[string]string // service → EDS resource name

	cwMu     sync.Mutex // held while calling cluster watchers
	cwNext   int
	cwatch   map[string]map[int]func(upstream.Settings)
	settings map[string]upstream.Settings // last good, by service

	// Owned by the run goroutine.
	snaps    map[string]*discovery.Snapshot // by service
	versions map[string]uint64              // by service
	outage   bool
	sotwOnly bool                            // the server has no delta xDS
	known    map[string]map[string]*deltaRes // delta: type → name → last received

	statsMu sync.Mutex
	stats   ClientStats
}

// The two types the client subscribes, in the order it subscribes them.
var clientTypes = []string{resource.ClusterType, resource.EndpointType}

// NewClient creates the client and starts its stream goroutine.
func NewClient(cfg ClientConfig, opts ClientOptions) (*Client, error) {
	if err := cfg.Validate("discovery.xds"); err != nil {
		return nil, err
	}
	creds, err := cfg.credentials()
	if err != nil {
		return nil, err
	}
	if opts.BackoffMin <= 0 {
		opts.BackoffMin = 100 * time.Millisecond
	}
	if opts.BackoffMax < opts.BackoffMin {
		opts.BackoffMax = max(5*time.Second, opts.BackoffMin)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "xds-client", "server", cfg.Address.String())
	dial := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		// Align gRPC's own reconnect backoff (1s..120s by default) with
		// ours, so that a restarted server is found again quickly.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: opts.BackoffMin, Multiplier: 1.6, Jitter: 0.2, MaxDelay: opts.BackoffMax},
			MinConnectTimeout: 5 * time.Second,
		}),
		// One connection, to a shuffled pick of the addresses (a DNS
		// name's or the list's): a fleet spreads over the replicas, and
		// a lost replica is replaced by the next one.
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"pick_first":{"shuffleAddressList":true}}]}`),
	}, opts.DialOptions...)
	target := cfg.Address[0]
	if len(cfg.Address) > 1 {
		r := manual.NewBuilderWithScheme("sidemesh-xds")
		addrs := make([]resolver.Address, len(cfg.Address))
		for i, a := range cfg.Address {
			addrs[i] = resolver.Address{Addr: a}
		}
		r.InitialState(resolver.State{Addresses: addrs})
		dial = append(dial, grpc.WithResolvers(r))
		target = "sidemesh-xds:///replicas"
	}
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("%w: discovery.xds.address: %v", ErrConfig, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		cfg:      cfg,
		log:      log,
		conn:     conn,
		ads:      discoveryv3.NewAggregatedDiscoveryServiceClient(conn),
		bmin:     opts.BackoffMin,
		bmax:     opts.BackoffMax,
		ctx:      ctx,
		cancel:   cancel,
		done:     make(chan struct{}),
		kick:     make(chan struct{}, 1),
		services: map[string]bool{},
		refs:     map[string]int{},
		edsNames: map[string]string{},
		known:    map[string]map[string]*deltaRes{},
		sotwOnly: opts.StateOfTheWorld,
		cwatch:   map[string]map[int]func(upstream.Settings){},
		settings: map[string]upstream.Settings{},
		snaps:    map[string]*discovery.Snapshot{},
		versions: map[string]uint64{},
	}
	c.stats.Address = cfg.Address.String()
	c.stats.Types = map[string]*TypeStats{}
	for _, t := range clientTypes {
		c.stats.Types[t] = &TypeStats{}
	}
	go c.run()
	return c, nil
}

var _ discovery.Source = (*Client)(nil)

// Watch implements discovery.Source: it subscribes the service's cluster
// and endpoints. When the last watch of a service (Watch or WatchCluster)
// is cancelled, the client unsubscribes it.
func (c *Client) Watch(service string, w discovery.Watcher) (cancel func()) {
	c.subscribe(service)
	cancelFan := c.fan.Watch(service, w)
	var once sync.Once
	return func() {
		once.Do(func() {
			cancelFan()
			c.unsubscribe(service)
		})
	}
}

// Subscribed lists the services the client subscribes to, sorted.
func (c *Client) Subscribed() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.services))
	for s := range c.services {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// WatchCluster calls fn with the service's cluster settings now (if known)
// and whenever a new, different Cluster is accepted. It subscribes the
// service like Watch does.
func (c *Client) WatchCluster(service string, fn func(upstream.Settings)) (cancel func()) {
	c.cwMu.Lock()
	id := c.cwNext
	c.cwNext++
	if c.cwatch[service] == nil {
		c.cwatch[service] = map[int]func(upstream.Settings){}
	}
	c.cwatch[service][id] = fn
	if cs, ok := c.settings[service]; ok {
		fn(cs)
	}
	c.cwMu.Unlock()
	c.subscribe(service)
	var once sync.Once
	return func() {
		once.Do(func() {
			c.cwMu.Lock()
			delete(c.cwatch[service], id)
			c.cwMu.Unlock()
			c.unsubscribe(service)
		})
	}
}

// subscribe counts a watch of service and subscribes it on its first.
func (c *Client) subscribe(service string) {
	c.mu.Lock()
	c.refs[service]++
	if c.services[service] {
		c.mu.Unlock()
		return
	}
	c.services[service] = true
	c.mu.Unlock()
	c.kickStream()
}

// unsubscribe drops a watch of service and unsubscribes it after its last
// (a reload that removed the upstream).
func (c *Client) unsubscribe(service string) {
	c.mu.Lock()
	c.refs[service]--
	if c.refs[service] > 0 {
		c.mu.Unlock()
		return
	}
	delete(c.refs, service)
	delete(c.services, service)
	delete(c.edsNames, service)
	c.mu.Unlock()
	c.cwMu.Lock()
	delete(c.settings, service)
	c.cwMu.Unlock()
	c.kickStream()
}

func (c *Client) kickStream() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Close stops the client: the stream ends and no callback follows.
func (c *Client) Close() error {
	c.cancel()
	<-c.done
	return c.conn.Close()
}

// names returns the sorted resource names to subscribe for typeURL.
func (c *Client) names(typeURL string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	set := map[string]bool{}
	for svc := range c.services {
		name := svc
		if typeURL == resource.EndpointType {
			if n, ok := c.edsNames[svc]; ok {
				name = n
			}
		}
		set[name] = true
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (c *Client) run() {
	defer close(c.done)
	attempt := 0
	for {
		var received bool
		var err error
		if c.sotwOnly {
			received, err = c.stream()
		} else {
			received, err = c.streamDelta()
			if !received && status.Code(err) == codes.Unimplemented {
				c.log.Info("xDS server has no delta xDS; using state of the world", "err", err)
				c.sotwOnly = true
				continue
			}
		}
		if c.ctx.Err() != nil {
			return
		}
		if received {
			attempt = 0
		}
		c.lostStream(err)
		d := c.backoff(attempt)
		attempt++
		t := time.NewTimer(d)
		select {
		case <-c.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// backoff is min·2^attempt capped at max, jittered into [d/2, d].
func (c *Client) backoff(attempt int) time.Duration {
	d := c.bmin
	for i := 0; i < attempt && d < c.bmax; i++ {
		d *= 2
	}
	d = min(d, c.bmax)
	return d/2 + rand.N(d/2+1)
}

func (c *Client) lostStream(err error) {
	c.statsMu.Lock()
	c.stats.Connected = false
	c.stats.LastError = err.Error()
	c.statsMu.Unlock()
	if c.outage {
		return
	}
	c.outage = true
	c.log.Warn("xDS stream lost; serving the last config", "err", err)
	amb := fmt.Errorf("%w: xds server %s: %v", discovery.ErrUnavailable, c.cfg.Address.String(), err)
	for _, svc := range c.fan.Services() {
		c.fan.AmbientError(svc, amb)
	}
}

// typeState is one type's protocol state on one stream.
type typeState struct {
	version string   // last accepted version (kept across streams)
	nonce   string   // last response nonce on this stream
	sent    []string // names last sent on this stream; nil: never sent
}

// streamLoop runs the part of one ADS stream that the state-of-the-world
// and delta protocols share: a reader goroutine for recv, resubscribe at
// the start and whenever a watch is added or cancelled (kick), the first
// response marking the stream up (upStats, under statsMu), and every
// response handed to handle until the stream fails, handle fails or the
// client closes. received says whether any response arrived. cancel ends
// the stream's context; the reader is waited for before returning.
func streamLoop[R any](c *Client, cancel context.CancelFunc, recv func() (R, error), resubscribe func() error,
	upStats func(*ClientStats), upMsg string, handle func(R) error) (received bool, err error) {
	type result struct {
		resp R
		err  error
	}
	ctx := c.ctx
	msgs := make(chan result)
	stop := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			resp, err := recv()
			select {
			case msgs <- result{resp, err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		close(stop)
		cancel() // ends recv
		<-readerDone
	}()
	if err := resubscribe(); err != nil {
		return false, err
	}
	for {
		select {
		case <-ctx.Done():
			return received, ErrClosed
		case <-c.kick:
			if err := resubscribe(); err != nil {
				return received, err
			}
		case r := <-msgs:
			if r.err != nil {
				return received, r.err
			}
			if !received {
				received = true
				c.outage = false
				c.statsMu.Lock()
				upStats(&c.stats)
				c.statsMu.Unlock()
				c.log.Info(upMsg)
			}
			if err := handle(r.resp); err != nil {
				return received, err
			}
			// A CDS response may change EDS names.
			if err := resubscribe(); err != nil {
				return received, err
			}
		}
	}
}

// stream runs one ADS stream until it fails or the client closes.
// received says whether any response arrived.
func (c *Client) stream() (received bool, err error) {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	st, err := c.ads.StreamAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	c.statsMu.Lock()
	c.stats.Streams++
	c.stats.Delta = false
	c.statsMu.Unlock()

	states := map[string]*typeState{}
	for _, t := range clientTypes {
		states[t] = &typeState{version: c.typeStats(t).Version}
	}
	first := true
	send := func(t string, errDetail *statuspb.Status) error {
		s := states[t]
		names := c.names(t)
		req := &discoveryv3.DiscoveryRequest{
			VersionInfo:   s.version,
			ResourceNames: names,
			TypeUrl:       t,
			ResponseNonce: s.nonce,
			ErrorDetail:   errDetail,
		}
		if first {
			req.Node = &corev3.Node{Id: c.cfg.NodeID, Cluster: c.cfg.Cluster, UserAgentName: "sidemesh"}
			first = false
		}
		s.sent = names
		return st.Send(req)
	}
	// resubscribe sends a request for every type whose names changed
	// (all of them on a new stream).
	resubscribe := func() error {
		for _, t := range clientTypes {
			names := c.names(t)
			if len(names) == 0 || (states[t].sent != nil && slicesEqual(states[t].sent, names)) {
				continue
			}
			if err := send(t, nil); err != nil {
				return err
			}
		}
		return nil
	}
	return streamLoop(c, cancel, st.Recv, resubscribe,
		func(cs *ClientStats) { cs.Connected = true }, "xDS stream up",
		func(resp *discoveryv3.DiscoveryResponse) error {
			t := resp.GetTypeUrl()
			s, ok := states[t]
			if !ok {
				c.log.Warn("response of a type never requested ignored", "type", t)
				return nil
			}
			s.nonce = resp.GetNonce()
			errs := c.handle(resp)
			var detail *statuspb.Status
			if len(errs) == 0 {
				s.version = resp.GetVersionInfo()
			} else {
				detail = nackStatus(errs)
			}
			c.record(resp, detail)
			return send(t, detail)
		})
}

// nackStatus is the error_detail of a NACK naming every problem found.
func nackStatus(errs []error) *statuspb.Status {
	return &statuspb.Status{Code: int32(codes.InvalidArgument), Message: errors.Join(errs...).Error()}
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// handle applies a response and returns what was wrong with it.
func (c *Client) handle(resp *discoveryv3.DiscoveryResponse) []error {
	switch resp.GetTypeUrl() {
	case resource.ClusterType:
		return c.handleClusters(resp)
	case resource.EndpointType:
		return c.handleEndpoints(resp)
	}
	return nil
}

func (c *Client) handleClusters(resp *discoveryv3.DiscoveryResponse) []error {
	var errs []error
	present := map[string]bool{}
	good := map[string]DecodedCluster{}
	for i, a := range resp.GetResources() {
		if a.GetTypeUrl() != resource.ClusterType {
			errs = append(errs, fmt.Errorf("%w: resource %d is a %s in a Cluster response", ErrInvalidResource, i, a.GetTypeUrl()))
			continue
		}
		cl := &clusterv3.Cluster{}
		if err := a.UnmarshalTo(cl); err != nil {
			errs = append(errs, fmt.Errorf("%w: resource %d: %v", ErrInvalidResource, i, err))
			continue
		}
		present[cl.GetName()] = true
		d, err := DecodeCluster(cl)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		good[cl.GetName()] = d
	}
	c.mu.Lock()
	services := make([]string, 0, len(c.services))
	for svc := range c.services {
		services = append(services, svc)
	}
	for svc, d := range good {
		if c.services[svc] {
			c.edsNames[svc] = d.EDSName
		}
	}
	c.mu.Unlock()
	sort.Strings(services)
	for _, svc := range services {
		if d, ok := good[svc]; ok {
			c.setSettings(svc, d.Settings)
			continue
		}
		if present[svc] {
			continue // invalid: keep the last good one
		}
		c.cwMu.Lock()
		_, had := c.settings[svc]
		delete(c.settings, svc)
		c.cwMu.Unlock()
		if had {
			c.log.Warn("cluster removed by the xDS server", "service", svc)
			delete(c.snaps, svc)
			c.fan.ResourceError(svc, fmt.Errorf("%w: cluster %q removed by xds server %s", discovery.ErrNotFound, svc, c.cfg.Address.String()))
		}
	}
	return errs
}

func (c *Client) setSettings(svc string, cs upstream.Settings) {
	c.cwMu.Lock()
	defer c.cwMu.Unlock()
	if old, ok := c.settings[svc]; ok && reflect.DeepEqual(old, cs) {
		return
	}
	c.settings[svc] = cs
	for _, fn := range c.cwatch[svc] {
		fn(cs)
	}
}

func (c *Client) handleEndpoints(resp *discoveryv3.DiscoveryResponse) []error {
	var errs []error
	byName := map[string][]discovery.Endpoint{}
	for i, a := range resp.GetResources() {
		if a.GetTypeUrl() != resource.EndpointType {
			errs = append(errs, fmt.Errorf("%w: resource %d is a %s in a ClusterLoadAssignment response", ErrInvalidResource, i, a.GetTypeUrl()))
			continue
		}
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := a.UnmarshalTo(cla); err != nil {
			errs = append(errs, fmt.Errorf("%w: resource %d: %v", ErrInvalidResource, i, err))
			continue
		}
		eps, err := DecodeLoadAssignment(cla)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		byName[cla.GetClusterName()] = eps
	}
	c.mu.Lock()
	targets := map[string][]string{} // EDS name → services
	for svc := range c.services {
		name := svc
		if n, ok := c.edsNames[svc]; ok {
			name = n
		}
		targets[name] = append(targets[name], svc)
	}
	c.mu.Unlock()
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		svcs := targets[name]
		sort.Strings(svcs)
		for _, svc := range svcs {
			next, err := discovery.NewSnapshot(svc, c.versions[svc]+1, byName[name])
			if err != nil {
				errs = append(errs, fmt.Errorf("%w: ClusterLoadAssignment %q: %v", ErrInvalidResource, name, err))
				continue
			}
			if last := c.snaps[svc]; last != nil && last.Equal(next) {
				c.fan.Publish(last) // re-confirmed
				continue
			}
			c.versions[svc]++
			c.snaps[svc] = next
			c.fan.Publish(next)
		}
	}
	return errs
}

// ClientStats is what /config_dump and the metrics show of the client.
type ClientStats struct {
	Address   string `json:"address"`
	Connected bool   `json:"connected"`
	// Delta is true while the stream is delta xDS (false: state of the world).
	Delta bool `json:"delta"`
	// Streams counts the streams opened (1 + reconnects that got through).
	Streams   uint64 `json:"streams"`
	LastError string `json:"last_error,omitempty"`
	// Types is keyed by type URL.
	Types map[string]*TypeStats `json:"types"`
}

// TypeStats are one resource type's protocol counters.
type TypeStats struct {
	Version  string    `json:"version"` // last accepted
	Nonce    string    `json:"nonce"`   // last received
	Updates  uint64    `json:"updates"` // responses received
	ACKs     uint64    `json:"acks"`
	NACKs    uint64    `json:"nacks"`
	LastNACK *NACKInfo `json:"last_nack,omitempty"`
}

func (c *Client) typeStats(t string) TypeStats {
	c.statsMu.Lock()
	defer c.statsMu.Unlock()
	return *c.stats.Types[t]
}

func (c *Client) record(resp *discoveryv3.DiscoveryResponse, nack *statuspb.Status) {
	c.recordStats(resp.GetTypeUrl(), resp.GetVersionInfo(), resp.GetNonce(), nack)
}

func (c *Client) recordStats(typeURL, version, nonce string, nack *statuspb.Status) {
	c.statsMu.Lock()
	defer c.statsMu.Unlock()
	ts := c.stats.Types[typeURL]
	ts.Updates++
	ts.Nonce = nonce
	if nack == nil {
		ts.ACKs++
		ts.Version = version
		return
	}
	ts.NACKs++
	ts.LastNACK = &NACKInfo{
		TypeURL: typeURL,
		Version: version,
		Nonce:   nonce,
		Detail:  nack.GetMessage(),
		Time:    time.Now(),
	}
	c.log.Warn("xDS response rejected", "type", typeURL, "version", version, "detail", nack.GetMessage())
}

// Stats returns a copy of the protocol counters.
func (c *Client) Stats() ClientStats {
	c.statsMu.Lock()
	defer c.statsMu.Unlock()
	out := c.stats
	out.Types = make(map[string]*TypeStats, len(c.stats.Types))
	for t, ts := range c.stats.Types {
		cp := *ts
		if ts.LastNACK != nil {
			n := *ts.LastNACK
			cp.LastNACK = &n
		}
		out.Types[t] = &cp
	}
	return out
}
