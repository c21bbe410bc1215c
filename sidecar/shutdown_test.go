package sidecar

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startSidecarNoCleanup is startSidecar without the Shutdown cleanup, for
// tests whose subject is Shutdown itself (a hung Shutdown must fail the
// test, not hang its cleanup).
func startSidecarNoCleanup(t *testing.T, cfgYAML, endpoints string) *Sidecar {
	t.Helper()
	dir := t.TempDir()
	ep := filepath.Join(dir, "endpoints.yaml")
	writeFile(t, ep, endpoints)
	cfg, err := Parse("test.yaml", []byte(strings.ReplaceAll(cfgYAML, "{{EP}}", ep)))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// shutdownWithin fails the test when Shutdown does not return in d.
func shutdownWithin(t *testing.T, s *Sidecar, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("Shutdown did not return within %v", d)
	}
}

// Shutdown with a TCP inbound listener returns (it used to wait for ever on
// the inbound accept loop, whose listener nobody closed).
func TestShutdownTCPInbound(t *testing.T) {
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	port := app.Addr().(*net.TCPAddr).Port
	s := startSidecarNoCleanup(t, fmt.Sprintf(`
admin: 127.0.0.1:0
service: {name: web, port: %d, inbound: 127.0.0.1:0, protocol: tcp}
`, port), "services: {}\n")
	addr := s.InboundAddr()
	shutdownWithin(t, s, 10*time.Second)
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("inbound listener still accepting after Shutdown")
	}
}

// Shutdown with a TCP connection open through the transparent listener
// returns (at drain.timeout: an open connection is outbound activity). The transparent listener waited for its connections before the
// TCP proxies were told to close them, so a long-lived connection (a
// database client) hung Shutdown for ever.
//
// Without iptables the original destination is the listener's own address,
// so the TCP upstream owning it points back at the listener; max_connections
// 1 stops the loop after one hop.
func TestShutdownTransparentTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := startSidecarNoCleanup(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
transparent: {listen: `+addr+`}
drain: {timeout: 2s, inbound_grace: 0s, quiet_period: 100ms}
upstreams:
  - {service: db, protocol: tcp, circuit_breakers: {max_connections: 1}, outlier_detection: {consecutive_local_origin_failure: 1000, consecutive_5xx: 1000}}
`, endpointsYAML("db", addr, 1))
	conn, err := net.Dial("tcp", s.TransparentAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = conn.Write([]byte("\x00binary")) // the client keeps its side open
	eventually(t, 5*time.Second, "relay established", func() bool {
		return s.Cluster("db").breaker().Stats().Connections.Active == 1
	})
	shutdownWithin(t, s, 10*time.Second)
}
