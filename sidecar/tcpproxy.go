package sidecar

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
	"github.com/sidemesh/sidemesh/tracing"
)

// tcpProxy relays bytes between a downstream connection and an endpoint,
// passing half-closes through. io.Copy between *net.TCPConn uses splice(2)
// on Linux, so the bytes never enter user space.
type tcpProxy struct {
	c   *Cluster
	log *slog.Logger
	d   net.Dialer
	wg  sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool // closeAll ran: connections tracked from now on are closed at once
}

func newTCPProxy(c *Cluster, log *slog.Logger) *tcpProxy {
	return &tcpProxy{c: c, log: log, d: net.Dialer{Timeout: c.cfg.ConnectTimeout, KeepAlive: 30 * time.Second},
		conns: map[net.Conn]struct{}{}}
}

func (p *tcpProxy) serve(ln net.Listener) error {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(conn)
		}()
	}
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
	p.wg.Wait()
}

// dialUpstream picks and connects, retrying connect failures on other
// endpoints (num_retries of the retry policy). It returns the host too.
func (p *tcpProxy) dialUpstream(ctx context.Context, info *balancer.PickInfo) (*tcpUpstream, *Host, error) {
	c := p.c
	var prev *Host
	var lastErr error
	retries := 0
	if parseRetryOn(c.cfg.RetryPolicy.RetryOn)&(roConnectFailure|ro5xx|roGatewayError) != 0 {
		retries = *c.cfg.RetryPolicy.NumRetries // TCP can only retry connect failures
	}
	for attempt := 0; attempt <= retries; attempt++ {
		h, _, err := c.pick(info, prev)
		if err != nil {
			c.cm.noHealthy.Inc()
			return nil, nil, err
		}
		prev = h
		br := c.breaker()
		if err := br.TryAcquireConn(); err != nil {
			c.noteOverflow(err)
			return nil, h, err
		}
		h.RqTotal.Add(1)
		d := p.d
		d.Timeout = c.connectTimeout()
		conn, err := d.DialContext(ctx, "tcp", h.Addr)
		if err != nil {
			br.ReleaseConn()
			h.RqError.Add(1)
			h.m.class[0].Inc()
			if od := h.outlier(); od != nil {
				od.Record(outlier.ConnectFailed)
			}
			lastErr = err
			continue
		}
		if od := h.outlier(); od != nil {
			od.Record(outlier.ConnectSuccessFinal)
		}
		return &tcpUpstream{TCPConn: conn.(*net.TCPConn), br: br}, h, nil
	}
	return nil, prev, lastErr
}

func (p *tcpProxy) handle(down net.Conn) {
	c := p.c
	defer down.Close()
	p.track(down, true)
	defer p.track(down, false)
	var info *balancer.PickInfo
	if len(c.cfg.HashPolicy) > 0 {
		if host, _, err := net.SplitHostPort(down.RemoteAddr().String()); err == nil {
			info = &balancer.PickInfo{Hash: hashString(host), HasHash: true}
		}
	}
	if info == nil {
		info = &balancer.PickInfo{}
	}
	ctx := context.Background()
	_, span := c.tp.StartTCP(ctx, tracing.Upstream{Service: c.Name, LBPolicy: c.policyName()})
	up, h, err := p.dialUpstream(ctx, info)
	if err != nil {
		p.log.Debug("tcp: no upstream connection", "err", err)
		if h != nil {
			tracing.SetEndpoint(span, h.Addr)
		}
		tracing.EndTCP(span, 0, 0, tcpOutcome(err))
		return // close: the contract's answer for TCP
	}
	tracing.SetEndpoint(span, h.Addr)
	h.Active.Add(1)
	h.CxActive.Add(1)
	c.cm.cxActive.Inc()
	defer func() {
		h.Active.Add(-1)
		h.CxActive.Add(-1)
		c.cm.cxActive.Dec()
	}()
	p.track(up, true)
	defer p.track(up, false)
	defer up.Close()
	sent, recv := relay(down, up)
	c.m.tcpBytes.WithLabelValues(c.Name, "sent").Add(float64(sent))
	c.m.tcpBytes.WithLabelValues(c.Name, "received").Add(float64(recv))
	h.m.class[2].Inc()
	tracing.EndTCP(span, sent, recv, tracing.OutcomeOK)
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

// tcpUpstream keeps the *net.TCPConn visible to io.Copy (for splice) and
// remembers which breaker holds its connection slot.
type tcpUpstream struct {
	*net.TCPConn
	br   *breaker.Breaker
	once sync.Once
}

func (u *tcpUpstream) Close() error {
	u.once.Do(u.br.ReleaseConn)
	return u.TCPConn.Close()
}

// relay copies both ways; when one side finishes sending, the other side's
// write half is closed (half-close), and relay returns when both are done.
func relay(down net.Conn, up *tcpUpstream) (sent, recv int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		recv, _ = io.Copy(down, up.TCPConn)
		closeWrite(down)
	}()
	sent, _ = io.Copy(up.TCPConn, down)
	closeWrite(up.TCPConn)
	wg.Wait()
	return sent, recv
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}
