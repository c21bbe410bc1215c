package sidecar

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// A 101 Switching Protocols answer (WebSocket) is relayed, and the request's
// accounting (breaker slot, rq_active, host active) ends when the upgraded
// connection ends. It used to be answered 502 by ReverseProxy (the wrapped
// body was not writable) with every counter leaked for good.
func TestUpgradeRelayedAndAccounted(t *testing.T) {
	be := startBackend(t, "ws", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want upgrade", 400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(conn, brw) // echo until the client closes
	})
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - {service: api, listen: 127.0.0.1:0}
`, endpointsYAML("api", be.addr, 1))
	for i := 0; i < 3; i++ {
		conn, err := net.Dial("tcp", s.UpstreamAddr("api"))
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			body, _ := io.ReadAll(resp.Body)
			t.Fatalf("upgrade answered %d %q", resp.StatusCode, body)
		}
		_, _ = conn.Write([]byte("ping\n"))
		line, err := br.ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("echo over the upgraded connection: %q %v", line, err)
		}
		conn.Close()
	}
	c := s.Cluster("api")
	eventually(t, 5*time.Second, "upgrade accounting released", func() bool {
		st := c.Status()
		return c.breaker().Stats().Requests.Active == 0 && len(st.Endpoints) == 1 && st.Endpoints[0].RqActive == 0
	})
}

// A 101 whose Upgrade does not match the request's is refused and its
// accounting released (ReverseProxy answers such a response without ever
// closing its body).
func TestMismatchedUpgradeReleased(t *testing.T) {
	be := startBackend(t, "ws", func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(io.Discard, brw)
	})
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - {service: api, listen: 127.0.0.1:0}
`, endpointsYAML("api", be.addr, 1))
	conn, err := net.Dial("tcp", s.UpstreamAddr("api"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		t.Fatalf("mismatched upgrade relayed")
	}
	c := s.Cluster("api")
	eventually(t, 5*time.Second, "accounting released", func() bool {
		st := c.Status()
		return c.breaker().Stats().Requests.Active == 0 && st.Endpoints[0].RqActive == 0
	})
}
