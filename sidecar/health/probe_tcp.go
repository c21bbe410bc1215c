package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// tcpProber opens a new connection per check: connect, write send, read
// until expect has been seen. Every failure is a network failure in Envoy
// (counted towards unhealthy_threshold), including a peer that closes
// before the expected bytes arrive.
type tcpProber struct {
	addr   string
	send   []byte
	expect []byte
	dialer net.Dialer
}

func newTCPProber(addr string, cfg *TCPCheck) *tcpProber {
	return &tcpProber{addr: addr, send: []byte(cfg.Send), expect: []byte(cfg.Expect)}
}

func (p *tcpProber) probe(ctx context.Context) result {
	conn, err := p.dialer.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return result{verdict: failCounted, err: err}
	}
	defer conn.Close()
	if len(p.send) == 0 && len(p.expect) == 0 {
		return result{verdict: pass}
	}
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	// Cancellation (host removed, Checker closed) interrupts a blocked
	// read or write by moving the deadline into the past.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if len(p.send) > 0 {
		if _, err := conn.Write(p.send); err != nil {
			return result{verdict: failCounted, err: fmt.Errorf("health: tcp send: %w", err)}
		}
	}
	if len(p.expect) == 0 {
		return result{verdict: pass}
	}
	if err := readUntil(conn, p.expect); err != nil {
		return result{verdict: failCounted, err: err}
	}
	return result{verdict: pass}
}

// readUntil reads r until want has appeared in the stream. It keeps only
// the last len(want)-1 bytes between reads, so a peer that streams forever
// costs no memory (the deadline ends it).
func readUntil(r io.Reader, want []byte) error {
	buf := make([]byte, 0, len(want)+4096)
	chunk := make([]byte, 4096)
	for {
		n, err := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if bytes.Contains(buf, want) {
			return nil
		}
		if keep := len(want) - 1; len(buf) > keep {
			buf = append(buf[:0], buf[len(buf)-keep:]...)
		}
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: %q before the connection closed", ErrExpectNotSeen, want)
		}
		if err != nil {
			return fmt.Errorf("health: tcp read: %w", err)
		}
	}
}

func (p *tcpProber) close() {}
