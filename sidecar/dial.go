package sidecar

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
)

// dialMode says how a dial meets a reached max_connections and what it
// reports to outlier detection on success.
type dialMode uint8

const (
	// dialHTTP waits for a connection slot as a pending request (bounded by
	// max_pending_requests and the route timeout) and reports
	// ConnectSuccess: the response status follows.
	dialHTTP dialMode = iota
	// dialTCP refuses at once when max_connections is reached (Envoy's
	// tcp_proxy) and reports ConnectSuccessFinal: nothing follows.
	dialTCP
	// dialH2 is dialHTTP for the HTTP/2 pool (mTLS origination offers ALPN
	// h2 instead of http/1.1).
	dialH2
)

// dialKeepAlive is the TCP keep-alive period of upstream connections.
const dialKeepAlive = 30 * time.Second

// dial is the one way the sidecar connects to an endpoint of c, for HTTP
// pools and TCP relays alike: it takes a max_connections slot, connects
// within connect_timeout, reports the connect outcome to outlier
// detection, and returns a connection that counts itself in cx_active (per
// endpoint and per upstream) until closed. A failed connect returns a
// *dialError (already reported: the attempt must not report it again).
func (c *Cluster) dial(ctx context.Context, addr string, mode dialMode) (*upstreamConn, error) {
	br := c.breaker()
	if err := c.acquireConn(ctx, br, mode); err != nil {
		return nil, err
	}
	return c.connect(ctx, br, addr, mode)
}

// connect is dial with the max_connections slot of br already taken; the
// connection gives it back when closed, a failed connect at once.
func (c *Cluster) connect(ctx context.Context, br *breaker.Breaker, addr string, mode dialMode) (*upstreamConn, error) {
	h := c.host(addr)
	d := net.Dialer{Timeout: c.connectTimeout(), KeepAlive: dialKeepAlive}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err == nil && h != nil && h.mtls.Load() && c.mesh != nil {
		// A mesh instance: mTLS with our leaf, and the server must prove it
		// is this upstream's service; a failure is a connect failure.
		conn, err = c.originate(ctx, conn, addr, mode)
	}
	if err != nil {
		br.ReleaseConn()
		if errors.Is(ctx.Err(), context.Canceled) {
			return nil, err // the request went away: nobody's fault
		}
		if h != nil {
			if od := h.outlier(); od != nil {
				r := outlier.ConnectFailed
				if errors.Is(err, context.DeadlineExceeded) {
					r = outlier.Timeout // connect_timeout or the request's deadline
				}
				od.Record(r)
			}
		}
		return nil, &dialError{err: err}
	}
	if h != nil {
		h.CxActive.Add(1)
		if od := h.outlier(); od != nil {
			if mode == dialTCP {
				od.Record(outlier.ConnectSuccessFinal)
			} else {
				od.Record(outlier.ConnectSuccess)
			}
		}
	}
	c.cm.cxActive.Inc()
	return &upstreamConn{Conn: conn, c: c, br: br, h: h}, nil
}

// originate runs the mTLS client handshake on conn within connect_timeout;
// on failure conn is closed and the error looks like a failed dial.
func (c *Cluster) originate(ctx context.Context, conn net.Conn, addr string, mode dialMode) (net.Conn, error) {
	var alpn []string
	switch mode {
	case dialHTTP:
		alpn = alpnH1
	case dialH2:
		alpn = alpnH2
	}
	hctx, cancel := context.WithTimeout(ctx, c.connectTimeout())
	defer cancel()
	tc, err := c.mesh.originate(hctx, conn, c.Name, alpn, c.tlsSessions)
	if err != nil {
		conn.Close()
		if c.log.Enabled(ctx, slog.LevelDebug) {
			c.log.Debug("mtls origination failed", "endpoint", addr, "err", err)
		}
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: conn.RemoteAddr(), Err: err}
	}
	return tc, nil
}

// setMesh turns on mTLS origination to the cluster's mesh endpoints (nil:
// off), with a session cache for resumption.
func (c *Cluster) setMesh(mt *meshTLS) {
	if mt == nil {
		return
	}
	c.mesh = mt
	c.tlsSessions = tls.NewLRUClientSessionCache(64)
}

// dialContextH2 is dialContext for the HTTP/2 pool.
func (c *Cluster) dialContextH2(ctx context.Context, _, addr string) (net.Conn, error) {
	conn, err := c.dial(ctx, addr, dialH2)
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// dialContext is dial in the shape of http.Transport.DialContext.
func (c *Cluster) dialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	conn, err := c.dial(ctx, addr, dialHTTP)
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// acquireConn takes a max_connections slot of br.
func (c *Cluster) acquireConn(ctx context.Context, br *breaker.Breaker, mode dialMode) error {
	err := br.TryAcquireConn()
	if err == nil {
		return nil
	}
	if mode == dialTCP {
		c.noteOverflow(err)
		return err
	}
	// max_connections reached: wait for a slot as a pending request,
	// bounded by max_pending_requests.
	if err := br.AcquirePending(); err != nil {
		c.noteOverflow(err)
		return err
	}
	defer br.ReleasePending()
	// net/http dials on a context detached from the request's
	// cancellation, so a wait on ctx alone outlives the request that
	// caused it and holds its pending slot until some connection closes.
	// No request waits longer than the route timeout.
	wctx := ctx
	if to := *c.upstream().Timeout; to > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, to)
		defer cancel()
	}
	if err := br.AcquireConn(wctx); err != nil {
		if ctx.Err() == nil {
			// Gave up waiting for a slot: an overflow, not the endpoint's
			// fault (no outlier result).
			st := br.Stats().Connections
			return breaker.Overflow{Threshold: st.Threshold, Limit: st.Limit}
		}
		return err
	}
	return nil
}

// noteOverflow logs a breaker refusal (the per-threshold counters live in
// the breaker).
func (c *Cluster) noteOverflow(err error) {
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("circuit breaker overflow", "err", err)
	}
}

// dialError is a connect failure the dialer has reported to outlier
// detection.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// upstreamConn is a connection to an endpoint that holds a max_connections
// slot and counts in cx_active until closed.
type upstreamConn struct {
	net.Conn
	c      *Cluster
	br     *breaker.Breaker
	h      *Host
	closed atomic.Bool
}

func (uc *upstreamConn) Close() error {
	if uc.closed.CompareAndSwap(false, true) {
		uc.br.ReleaseConn()
		if uc.h != nil {
			uc.h.CxActive.Add(-1)
		}
		uc.c.cm.cxActive.Dec()
	}
	return uc.Conn.Close()
}

// NetConn is the socket under the accounting (the HTTP/1.1 client peeks
// idle connections through it; the TCP relay splices on it).
// Over mTLS it is the TLS connection: its bytes are records, which neither
// a liveness peek nor a splice may see.
func (uc *upstreamConn) NetConn() net.Conn { return uc.Conn }

// CloseWrite lets TCP half-close pass through the wrapper.
func (uc *upstreamConn) CloseWrite() error {
	if cw, ok := uc.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
