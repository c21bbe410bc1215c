package sidecar

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

func TestTransparentRoutesHTTPByHost(t *testing.T) {
	api := startBackend(t, "api", nil)
	web := startBackend(t, "web", nil)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
transparent: {listen: 127.0.0.1:0}
upstreams:
  - {service: api}
  - {service: web, listen: 127.0.0.1:0}
`, endpointsYAML("api", api.addr, 1)+"  web:\n    - {address: "+web.addr+", weight: 1}\n")
	c := h1Client()
	tr := "http://" + s.TransparentAddr() + "/"
	for host, want := range map[string]string{"api": "hello from api", "api:8080": "hello from api",
		"api.default.svc.cluster.local": "hello from api", "web": "hello from web"} {
		req, _ := http.NewRequest("GET", tr, nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != want {
			t.Errorf("Host %s: %d %q, want %q", host, resp.StatusCode, body, want)
		}
	}
	req, _ := http.NewRequest("GET", tr, nil)
	req.Host = "nope"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("unknown upstream: %d, want 404", resp.StatusCode)
	}
	// h2c prior knowledge is sniffed too.
	req, _ = http.NewRequest("GET", tr, nil)
	req.Host = "api"
	resp, err = h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Errorf("h2c through transparent: %d proto %d", resp.StatusCode, resp.ProtoMajor)
	}
}

// Non-HTTP traffic to a destination no upstream owns is closed.
func TestTransparentClosesUnknownTCP(t *testing.T) {
	api := startBackend(t, "api", nil)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
transparent: {listen: 127.0.0.1:0}
upstreams:
  - {service: api}
`, endpointsYAML("api", api.addr, 1))
	conn, err := net.Dial("tcp", s.TransparentAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = conn.Write([]byte("\x00\x01binary hello"))
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(make([]byte, 10))
	if err != io.EOF || n != 0 {
		t.Fatalf("read = %d, %v; want the connection closed", n, err)
	}
}

func TestLooksHTTP(t *testing.T) {
	for in, want := range map[string]bool{"GET / HTTP/1.1": true, "POST /x": true, "PRI * HTTP/2.0": true,
		"\x16\x03\x01": false, "SSH-2.0": false, "GE": false, "": false} {
		if got := looksHTTP([]byte(in)); got != want {
			t.Errorf("looksHTTP(%q) = %v", in, got)
		}
	}
}

// The transparent listener on 127.0.0.1:P also takes [::1]:P, where capture
// redirects IPv6 connections; both are accepted through the one listener and
// both close with it.
func TestListenTransparentBindsIPv6Loopback(t *testing.T) {
	probe, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("skipped: no IPv6 loopback here: %v", err)
	}
	probe.Close()
	ln, err := listenTransparent("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	accepted := make(chan string, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c.LocalAddr().String()
			c.Close()
		}
	}()
	for _, addr := range []string{"127.0.0.1:" + port, "[::1]:" + port} {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		c.Close()
		if got := <-accepted; got != addr {
			t.Fatalf("accepted on %s, want %s", got, addr)
		}
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-accepted; ok {
		t.Fatal("Accept returned a connection after Close")
	}
	if c, err := net.DialTimeout("tcp", "[::1]:"+port, 5*time.Second); err == nil {
		c.Close()
		t.Fatalf("[::1]:%s still accepts after Close", port)
	}
	// Another address is bound as given, alone.
	other, err := listenTransparent("127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, ok := other.(*multiListener); ok {
		t.Fatal("127.0.0.2 got a second (IPv6) listener")
	}
}
