package sidecar

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// startEcho serves a line echo on 127.0.0.1 and a sink that reads and
// never answers, closing each connection when its client does.
func startEcho(t *testing.T) (echo, sink string) {
	t.Helper()
	serve := func(handle func(net.Conn)) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					handle(c)
				}()
			}
		}()
		return ln.Addr().String()
	}
	echo = serve(func(c net.Conn) { _, _ = io.Copy(c, c) })
	sink = serve(func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	return echo, sink
}

// tcp_idle_timeout closes a relayed connection on which no byte moves
// either way for that long, and leaves alone one that keeps sending, in
// both directions or in one only. The busy connections send every
// idle/20 and must stay open for 5 idle periods; the idle one must close
// (the relay closes between one and two periods after the last byte; the
// test allows much more).
func TestTCPIdleTimeout(t *testing.T) {
	const idle = 400 * time.Millisecond
	echo, sink := startEcho(t)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - {service: echo, listen: 127.0.0.1:0, protocol: tcp, tcp_idle_timeout: 400ms}
  - {service: sink, listen: 127.0.0.1:0, protocol: tcp, tcp_idle_timeout: 400ms}
`, endpointsYAML("echo", echo, 1)+endpointsYAML("sink", sink, 1)[len("services:\n"):])
	dial := func(name string) net.Conn {
		c, err := net.Dial("tcp", s.UpstreamAddr(name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	quiet := dial("echo")
	if _, err := quiet.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(quiet).ReadString('\n'); err != nil || line != "hello\n" {
		t.Fatalf("echo: %q %v", line, err)
	}
	closed := make(chan error, 1)
	go func() {
		_ = quiet.SetReadDeadline(time.Now().Add(30 * time.Second)) // a bound on a broken relay only
		_, err := quiet.Read(make([]byte, 1))
		closed <- err
	}()

	both := dial("echo")   // bytes both ways
	oneWay := dial("sink") // bytes client → upstream only
	br := bufio.NewReader(both)
	tick := time.NewTicker(idle / 20)
	defer tick.Stop()
	end := time.Now().Add(5 * idle)
	for n := 0; time.Now().Before(end); n++ {
		<-tick.C
		if _, err := both.Write([]byte("ping\n")); err != nil {
			t.Fatalf("busy echo connection closed after %d pings: %v", n, err)
		}
		_ = both.SetReadDeadline(time.Now().Add(30 * time.Second))
		if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
			t.Fatalf("busy echo connection after %d pings: %q %v", n, line, err)
		}
		if _, err := oneWay.Write([]byte("data\n")); err != nil {
			t.Fatalf("busy one-way connection closed after %d writes: %v", n, err)
		}
	}
	select {
	case err := <-closed:
		if err != io.EOF {
			t.Fatalf("idle connection: read returned %v, want EOF (closed by the relay)", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("idle connection still open after 30s")
	}
	// The one-way connection is still relayed: the sink's side is open.
	if _, err := oneWay.Write([]byte("more\n")); err != nil {
		t.Fatalf("one-way connection: %v", err)
	}
}

// tcp_idle_timeout: 0 disables the timeout.
func TestTCPIdleTimeoutDisabled(t *testing.T) {
	echo, _ := startEcho(t)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - {service: echo, listen: 127.0.0.1:0, protocol: tcp, tcp_idle_timeout: 0s}
`, endpointsYAML("echo", echo, 1))
	if got := *s.Cluster("echo").cfg.TCPIdleTimeout; got != 0 {
		t.Fatalf("tcp_idle_timeout = %v, want 0 (disabled)", got)
	}
	if p := s.tcpFor(s.Cluster("echo")); p.set.Load().idleTimeout != 0 {
		t.Fatalf("relay idle timeout = %v, want none", p.set.Load().idleTimeout)
	}
}
