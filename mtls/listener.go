package mtls

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// sniffTimeout bounds how long a permissive listener waits for a new
// connection's first byte.
const sniffTimeout = 10 * time.Second

// recordTypeHandshake is the first byte of every TLS ClientHello.
const recordTypeHandshake = 0x16

// NewListener wraps ln for mode: strict yields only server-side *tls.Conn
// (the handshake runs on first use: plaintext and unverified clients fail
// there); permissive looks at each connection's first byte and yields a
// *tls.Conn for a TLS ClientHello (0x16) and the plain connection for
// anything else, calling onPlain for each plaintext one. Any other mode
// returns ln.
func NewListener(ln net.Listener, mode string, cfg *tls.Config, onPlain func()) net.Listener {
	switch mode {
	case ModeStrict:
		return tls.NewListener(ln, cfg)
	case ModePermissive:
		l := &sniffListener{Listener: ln, cfg: cfg, onPlain: onPlain, ch: make(chan net.Conn), done: make(chan struct{}), pending: map[net.Conn]bool{}}
		l.err = make(chan error, 1)
		go l.acceptLoop()
		return l
	}
	return ln
}

type sniffListener struct {
	net.Listener
	cfg     *tls.Config
	onPlain func()
	ch      chan net.Conn
	err     chan error
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	pending map[net.Conn]bool
}

func (l *sniffListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				time.Sleep(5 * time.Millisecond) // as net/http's accept backoff floor
				continue
			}
			l.err <- err
			return
		}
		l.mu.Lock()
		select {
		case <-l.done:
			l.mu.Unlock()
			c.Close()
			return
		default:
		}
		l.pending[c] = true
		l.mu.Unlock()
		go l.sniff(c)
	}
}

func (l *sniffListener) sniff(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(sniffTimeout))
	br := bufio.NewReaderSize(c, 512)
	first, err := br.Peek(1)
	_ = c.SetReadDeadline(time.Time{})
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
	if err != nil {
		c.Close()
		return
	}
	var out net.Conn = &peekedConn{Conn: c, r: br}
	if first[0] == recordTypeHandshake {
		out = tls.Server(out, l.cfg)
	} else if l.onPlain != nil {
		l.onPlain()
	}
	select {
	case l.ch <- out:
	case <-l.done:
		out.Close()
	}
}

func (l *sniffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case err := <-l.err:
		l.err <- err
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *sniffListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() {
		l.mu.Lock()
		close(l.done)
		for c := range l.pending {
			c.Close()
		}
		l.mu.Unlock()
	})
	return err
}

// peekedConn reads the sniffed bytes before the rest of the connection.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// NetConn is the socket under the sniffing buffer.
func (c *peekedConn) NetConn() net.Conn { return c.Conn }

// CloseWrite lets TCP half-close pass through.
func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
