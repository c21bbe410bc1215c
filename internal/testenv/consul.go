package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// ConsulNode is the node name of the agent StartConsul runs.
const ConsulNode = "test"

// consulReadyTimeout bounds the wait for a leader and the agent's own node.
const consulReadyTimeout = 30 * time.Second

// ConsulBinary returns the consul binary built by `make tools`
// (bin/tools/consul) or $SIDEMESH_CONSUL; see Tool for what happens when it
// is missing.
func ConsulBinary(t testing.TB) string {
	t.Helper()
	return Tool(t, "consul", "SIDEMESH_CONSUL")
}

// Consul is a `consul agent -dev` (a single server, state in memory) bound to
// 127.0.0.1 on ports from FreePorts, with DNS and gRPC off. Restart keeps the
// ports, so clients see an outage and a recovery of the same address; being
// in-memory, the restarted agent has forgotten every registration.
type Consul struct {
	*Process
	httpPort int
}

// StartConsul starts an agent and waits until it has a leader and has
// registered its own node. It is killed when the test ends.
func StartConsul(t testing.TB) *Consul {
	t.Helper()
	bin := ConsulBinary(t)
	ports := FreePorts(t, 4)
	c := &Consul{httpPort: ports[0]}
	c.Process = StartProcess(t, "consul", bin,
		"agent", "-dev",
		"-node", ConsulNode,
		"-bind", "127.0.0.1",
		"-client", "127.0.0.1",
		"-http-port", strconv.Itoa(ports[0]),
		"-serf-lan-port", strconv.Itoa(ports[1]),
		"-serf-wan-port", strconv.Itoa(ports[2]),
		"-server-port", strconv.Itoa(ports[3]),
		"-dns-port", "-1",
		"-grpc-port", "-1",
		"-log-level", "info",
	)
	c.waitReady()
	return c
}

// Addr is the HTTP API address, host:port.
func (c *Consul) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.httpPort)) }

// Restart kills the agent (if running), starts it on the same ports and
// waits until it is ready again.
func (c *Consul) Restart() {
	c.t.Helper()
	c.Stop()
	if err := c.Start(); err != nil {
		c.t.Fatalf("testenv: restart consul: %v", err)
	}
	c.waitReady()
}

// Client returns an API client for the agent; its idle connections are
// closed when the test ends.
func (c *Consul) Client(t testing.TB) *api.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	client, err := api.NewClient(&api.Config{Address: c.Addr(), Scheme: "http", Transport: tr})
	if err != nil {
		t.Fatalf("testenv: consul client: %v", err)
	}
	return client
}

func (c *Consul) waitReady() {
	c.t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	base := "http://" + c.Addr()
	c.WaitReady(consulReadyTimeout, func() error {
		var leader string
		if err := getJSON(hc, base+"/v1/status/leader", &leader); err != nil {
			return err
		}
		if leader == "" {
			return fmt.Errorf("no leader yet")
		}
		var node struct{ Node *struct{ Node string } }
		if err := getJSON(hc, base+"/v1/catalog/node/"+ConsulNode, &node); err != nil {
			return err
		}
		if node.Node == nil {
			return fmt.Errorf("node %q not in the catalog yet", ConsulNode)
		}
		return nil
	})
}

func getJSON(hc *http.Client, url string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
