package sidecar

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/tracing"
)

// tcpProxy relays bytes between a downstream connection and an endpoint,
// passing half-closes through. io.Copy between *net.TCPConn uses splice(2)
// on Linux, so the bytes never enter user space.
type tcpProxy struct {
	c        *Cluster
	log      *slog.Logger
	set      atomic.Pointer[tcpSettings]
	handlers connGroup // one per connection its listener accepted
	act      *activity // outbound: counts its connections for the drain
	alog     *atomic.Pointer[accessLog]
	// accept, when set, vets a new connection before any upstream is
	// dialed (inbound mTLS: handshake and intentions); false closes it.
	accept func(net.Conn) bool

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool // closeAll ran: connections tracked from now on are closed at once
}

func newTCPProxy(c *Cluster, log *slog.Logger) *tcpProxy {
	p := &tcpProxy{c: c, log: log, conns: map[net.Conn]struct{}{}}
	p.set.Store(newTCPSettings(c.upstream()))
	return p
}

// tcpSettings are the TCP proxy's own settings, read once per connection
// (a reload swaps them; a connection keeps the ones it started with).
type tcpSettings struct {
	retries     int           // connect failures retried on other endpoints
	idleTimeout time.Duration // tcp_idle_timeout (0: none)
	hashes      bool          // hash_policy set: hash on the client address
}

func newTCPSettings(u *Upstream) *tcpSettings {
	rp := newRetryPolicy(*u.RetryPolicy)
	return &tcpSettings{retries: rp.connectRetries(), idleTimeout: *u.TCPIdleTimeout, hashes: len(u.HashPolicy) > 0}
}

func (p *tcpProxy) serve(ln net.Listener) error {
	return serveConns(ln, p.log, &p.handlers, p.handle)
}

func (p *tcpProxy) track(c net.Conn, on bool) {
	p.mu.Lock()
	if on && p.closed {
		p.mu.Unlock()
		_ = c.Close() // too late: closeAll already ran
		return
	}
	if on {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
	p.mu.Unlock()
}

// closeAll ends every relayed connection (after the drain period).
func (p *tcpProxy) closeAll() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.handlers.closeAndWait()
}

// dialUpstream picks and connects, retrying connect failures on other
// endpoints (num_retries of the retry policy, when retry_on covers connect
// failures). Each attempt takes its max_connections slot before the pick
// (Envoy's tcp_proxy refuses at once when the limit is reached). On
// success the returned pick is the relay's attempt, to be ended with Done.
func (p *tcpProxy) dialUpstream(ctx context.Context, set *tcpSettings, info *balancer.PickInfo) (*upstreamConn, picked, error) {
	c := p.c
	var prev *Host
	var lastErr error
	for attempt := 0; attempt <= set.retries; attempt++ {
		br := c.breaker()
		if err := c.acquireConn(ctx, br, dialTCP); err != nil {
			return nil, picked{Host: prev}, err
		}
		pk, err := c.pick(info, prev)
		if err != nil {
			br.ReleaseConn()
			c.cm.noHealthy.Inc()
			return nil, picked{Host: prev}, err
		}
		prev = pk.Host
		conn, err := c.connect(ctx, br, pk.Host.Addr, dialTCP)
		if err != nil {
			pk.Done(DoneInfo{Fail: failConnect})
			lastErr = err
			continue
		}
		return conn, pk, nil
	}
	return nil, picked{Host: prev}, lastErr
}

func (p *tcpProxy) handle(down net.Conn) {
	c := p.c
	start := time.Now()
	if p.act != nil {
		p.act.begin()
		defer p.act.end()
	}
	defer down.Close()
	p.track(down, true)
	defer p.track(down, false)
	if p.accept != nil && !p.accept(down) {
		return
	}
	var info *balancer.PickInfo
	set := p.set.Load()
	var al *accessLog
	if p.alog != nil {
		al = p.alog.Load()
	}
	if set.hashes {
		if host, _, err := net.SplitHostPort(down.RemoteAddr().String()); err == nil {
			info = &balancer.PickInfo{Hash: hashString(host), HasHash: true}
		}
	}
	if info == nil {
		info = &balancer.PickInfo{}
	}
	ctx := context.Background()
	_, span := c.tp.StartTCP(ctx, tracing.Upstream{Service: c.Name, LBPolicy: c.policyName()})
	up, pk, err := p.dialUpstream(ctx, set, info)
	if err != nil {
		if p.log.Enabled(ctx, slog.LevelDebug) {
			p.log.Debug("tcp: no upstream connection", "err", err)
		}
		if pk.Host != nil {
			tracing.SetEndpoint(span, pk.Host.Addr)
			tracing.SetLocality(span, pk.Priority, pk.Zone)
		}
		tracing.EndTCP(span, 0, 0, tcpOutcome(err))
		if al != nil {
			ep := ""
			if pk.Host != nil {
				ep = pk.Host.Addr
			}
			al.tcpAccess(c, start, ep, flagsOf(classify(err, ctx)), set.retries+1, 0, 0)
		}
		return // close: the contract's answer for TCP
	}
	tracing.SetEndpoint(span, pk.Host.Addr)
	tracing.SetLocality(span, pk.Priority, pk.Zone)
	p.track(up, true)
	defer p.track(up, false)
	defer up.Close()
	sent, recv := relay(down, up, set.idleTimeout)
	c.m.tcpBytes.WithLabelValues(c.Name, "sent").Add(float64(sent))
	c.m.tcpBytes.WithLabelValues(c.Name, "received").Add(float64(recv))
	pk.Done(DoneInfo{Status: http.StatusOK}) // a relayed connection counts as 2xx
	tracing.EndTCP(span, sent, recv, tracing.OutcomeOK)
	if al != nil {
		al.tcpAccess(c, start, pk.Host.Addr, 0, 1, sent, recv)
	}
}

func tcpOutcome(err error) tracing.Outcome {
	switch {
	case errors.Is(err, ErrNoHealthyUpstream):
		return tracing.OutcomeNoHealthyUpstream
	case errors.Is(err, breaker.ErrOverflow):
		return tracing.OutcomeOverloaded
	}
	return tracing.OutcomeConnectFailure
}

// relay copies both ways until both are done; when one side finishes
// sending, the other side's write half is closed (half-close). With idle
// set, the pair is closed once no byte has moved either way for idle
// (Envoy's tcp_proxy idle_timeout). The copies stay splice(2) between the
// sockets: progress is seen through read deadlines, so a quiet pair is
// closed between idle and twice idle after its last byte.
func relay(down net.Conn, up *upstreamConn, idle time.Duration) (sent, recv int64) {
	upc := up.NetConn() // the socket itself: io.Copy splices between *net.TCPConn
	r := &relayPair{idle: idle, src: [2]net.Conn{down, upc}}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		recv = r.copy(1, down, upc)
		closeWrite(down)
	}()
	sent = r.copy(0, upc, down)
	closeWrite(upc)
	wg.Wait()
	return sent, recv
}

// relayPair is the idle bookkeeping of one relayed connection pair.
// Direction 0 reads src[0] (downstream), direction 1 reads src[1].
//
// A direction sees its own progress only when its copy returns (a splice
// moves bytes unseen), so each copy runs under a read deadline and returns
// at least once per idle period. A direction that finds itself quiet for
// idle asks the other for a fresh report by moving its deadline to now;
// the other, answering while quiet for idle too, closes the pair.
type relayPair struct {
	idle time.Duration
	src  [2]net.Conn

	mu     sync.Mutex
	quiet  [2]time.Time // start of a direction's run without bytes, as of its last report (zero: it moved bytes)
	poked  [2]bool      // the other direction asked for a report
	done   [2]bool      // the direction finished (EOF or error): quiet from then on
	closed bool
}

// copy runs direction i until its source ends, returning the bytes moved.
func (r *relayPair) copy(i int, dst, src net.Conn) int64 {
	if r.idle <= 0 {
		n, _ := io.Copy(dst, src)
		return n
	}
	var total int64
	start := time.Now()
	_ = src.SetReadDeadline(start.Add(r.idle))
	for {
		n, err := io.Copy(dst, src)
		total += n
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			r.finish(i)
			return total
		}
		if r.report(i, n > 0, start) {
			return total
		}
		start = time.Now()
	}
}

// report runs when direction i's copy returned on its read deadline,
// having moved bytes (moved) since segStart. It closes the pair when both
// directions are known quiet for idle, and re-arms i's deadline otherwise.
// It reports whether the pair is closed.
func (r *relayPair) report(i int, moved bool, segStart time.Time) bool {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return true
	}
	o := 1 - i
	poked := r.poked[i]
	r.poked[i] = false
	if moved {
		r.quiet[i] = time.Time{}
		_ = r.src[i].SetReadDeadline(now.Add(r.idle))
		return false
	}
	if r.quiet[i].IsZero() {
		r.quiet[i] = segStart
	}
	if now.Sub(r.quiet[i]) < r.idle {
		_ = r.src[i].SetReadDeadline(r.quiet[i].Add(r.idle))
		return false
	}
	// Quiet for idle. The other direction's state is current if it is
	// done, or if it asked for this report while quiet for idle itself
	// (and has not moved bytes since).
	if r.done[o] || poked && !r.quiet[o].IsZero() && now.Sub(r.quiet[o]) >= r.idle {
		r.closed = true
		_ = r.src[0].Close()
		_ = r.src[1].Close()
		return true
	}
	r.poked[o] = true
	_ = r.src[o].SetReadDeadline(now) // ask for a report now
	_ = r.src[i].SetReadDeadline(now.Add(r.idle))
	return false
}

// finish marks direction i done: it counts as quiet from now on.
func (r *relayPair) finish(i int) {
	r.mu.Lock()
	r.done[i] = true
	r.mu.Unlock()
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}
