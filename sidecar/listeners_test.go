package sidecar

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// scriptedListener answers Accept from script, one entry per call (a nil
// entry: the next connection sent on conns), then hands out the
// connections sent on conns until closed.
type scriptedListener struct {
	script  []error
	accepts atomic.Int64
	conns   chan net.Conn
	done    chan struct{}
	once    sync.Once
}

func newScriptedListener(script ...error) *scriptedListener {
	return &scriptedListener{script: script, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *scriptedListener) Accept() (net.Conn, error) {
	n := int(l.accepts.Add(1))
	if n <= len(l.script) && l.script[n-1] != nil {
		return nil, l.script[n-1]
	}
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *scriptedListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *scriptedListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

func acceptErr(errno syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
}

// Out of file descriptors, the accept loop backs off (5 ms doubling to
// 1 s, as net/http) instead of spinning, and serves again once Accept
// works.
func TestAcceptBackoffOnEMFILE(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var script []error
		for i := 0; i < 10; i++ {
			script = append(script, acceptErr(syscall.EMFILE))
		}
		script = append(script, acceptErr(syscall.ENFILE))
		ln := newScriptedListener(script...)
		var g connGroup
		served := make(chan net.Conn, 1)
		errc := make(chan error, 1)
		start := time.Now()
		go func() {
			errc <- serveConns(ln, slog.New(slog.DiscardHandler), &g, func(c net.Conn) { served <- c })
		}()
		a, b := net.Pipe()
		defer b.Close()
		ln.conns <- a // blocks until the loop has got past its failures
		waited := time.Since(start)
		if got := <-served; got != a {
			t.Fatalf("served %v, want the accepted connection", got)
		}
		// 5+10+20+40+80+160+320+640 ms, then 1 s three times.
		want := 1275*time.Millisecond + 3*time.Second
		if waited != want {
			t.Errorf("backoff took %v, want %v", waited, want)
		}
		synctest.Wait()
		if n := ln.accepts.Load(); n != int64(len(script))+2 {
			t.Errorf("%d Accept calls, want %d (no spinning)", n, len(script)+2)
		}
		ln.Close()
		if err := <-errc; err != nil {
			t.Fatalf("serveConns after Close: %v", err)
		}
		g.closeAndWait()
		a.Close()
	})
}

// A success resets the backoff; an error that is not temporary ends the
// loop with that error.
func TestAcceptBackoffResetsAndStopsOnPermanentError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		broken := errors.New("listener broken")
		ln := newScriptedListener(acceptErr(syscall.EMFILE), acceptErr(syscall.EMFILE), nil, acceptErr(syscall.EMFILE), broken)
		var g connGroup
		errc := make(chan error, 1)
		start := time.Now()
		go func() {
			errc <- serveConns(ln, slog.New(slog.DiscardHandler), &g, func(c net.Conn) { c.Close() })
		}()
		a, b := net.Pipe()
		defer b.Close()
		ln.conns <- a
		if got := time.Since(start); got != 15*time.Millisecond {
			t.Errorf("first failures took %v, want 5ms+10ms", got)
		}
		err := <-errc
		if !errors.Is(err, broken) {
			t.Fatalf("serveConns = %v, want the permanent error", err)
		}
		// After the success, the next failure waited 5 ms again.
		if got := time.Since(start); got != 20*time.Millisecond {
			t.Errorf("loop ended after %v, want 15ms+5ms", got)
		}
		if n := ln.accepts.Load(); n != 5 {
			t.Errorf("%d Accept calls, want 5", n)
		}
		g.closeAndWait()
	})
}

func TestTemporaryAcceptErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{acceptErr(syscall.EMFILE), true},
		{acceptErr(syscall.ENFILE), true},
		{acceptErr(syscall.EINTR), true},
		{acceptErr(syscall.ENOBUFS), true},
		{acceptErr(syscall.EINVAL), false},
		{errors.New("other"), false},
	} {
		if got := temporaryAcceptError(tc.err); got != tc.want {
			t.Errorf("temporaryAcceptError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
