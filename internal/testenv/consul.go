package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
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
//
// With ConsulInPod the agent runs in a pod instead, on Consul's default
// ports, bound to the pod's address (its HTTP API on every address of the
// pod), so other pods reach it and its health checks run from its own host.
// ConsulDatacenter and ConsulJoinWAN make a second agent another
// datacenter joined over the WAN to the first, for failover across
// datacenters.
type Consul struct {
	*Process
	host     string // the HTTP API's and the WAN's address
	httpPort int
	wanPort  int
	dc       string
	pod      *Pod // nil: on loopback
}

// Consul's default ports, used in a pod: HTTP API, Serf LAN and WAN, server RPC.
const (
	ConsulHTTPPort    = 8500
	consulSerfLANPort = 8301
	consulSerfWANPort = 8302
	consulServerPort  = 8300
)

// ConsulOption is an option of StartConsul.
type ConsulOption func(*consulOptions)

type consulOptions struct {
	pod  *Pod
	dc   string
	join *Consul
}

// ConsulInPod runs the agent in pod (see Consul).
func ConsulInPod(pod *Pod) ConsulOption { return func(o *consulOptions) { o.pod = pod } }

// ConsulDatacenter names the agent's datacenter (default dc1).
func ConsulDatacenter(dc string) ConsulOption { return func(o *consulOptions) { o.dc = dc } }

// ConsulJoinWAN joins the agent to first's WAN pool (-retry-join-wan);
// StartConsul then also waits until each sees the other's datacenter. Both
// must be on loopback, or both in pods of one harness.
func ConsulJoinWAN(first *Consul) ConsulOption { return func(o *consulOptions) { o.join = first } }

// StartConsul starts an agent and waits until it has a leader and has
// registered its own node. It is killed when the test ends.
func StartConsul(t testing.TB, opts ...ConsulOption) *Consul {
	t.Helper()
	o := consulOptions{dc: "dc1"}
	for _, opt := range opts {
		opt(&o)
	}
	bin := ConsulBinary(t)
	var ports []int
	c := &Consul{host: "127.0.0.1", dc: o.dc, pod: o.pod}
	bind, client := "127.0.0.1", "127.0.0.1"
	if o.pod != nil {
		ports = []int{ConsulHTTPPort, consulSerfLANPort, consulSerfWANPort, consulServerPort}
		// 0.0.0.0 is every address, IPv6 too where the pod has it: Go
		// listens on a dual-stack socket for it.
		c.host, bind, client = o.pod.IP.String(), o.pod.IP.String(), "0.0.0.0"
	} else {
		ports = FreePorts(t, 4)
	}
	c.httpPort, c.wanPort = ports[0], ports[2]
	args := []string{
		"agent", "-dev",
		"-node", ConsulNode,
		"-datacenter", o.dc,
		"-bind", bind,
		"-client", client,
		"-http-port", strconv.Itoa(ports[0]),
		"-serf-lan-port", strconv.Itoa(ports[1]),
		"-serf-wan-port", strconv.Itoa(ports[2]),
		"-server-port", strconv.Itoa(ports[3]),
		"-dns-port", "-1",
		"-grpc-port", "-1",
		"-log-level", "info",
	}
	if o.join != nil {
		if (o.join.pod == nil) != (o.pod == nil) || (o.pod != nil && o.join.pod.pods != o.pod.pods) {
			t.Fatalf("testenv: consul %s: ConsulJoinWAN needs both agents on loopback or both in pods of one harness", o.dc)
		}
		if o.join.dc == o.dc {
			t.Fatalf("testenv: consul: ConsulJoinWAN: both agents are datacenter %q; name this one with ConsulDatacenter", o.dc)
		}
		args = append(args, "-retry-join-wan", o.join.WANAddr(), "-retry-interval-wan", "1s")
	}
	name := "consul"
	if o.dc != "dc1" {
		name += "-" + o.dc
	}
	if o.pod != nil {
		c.Process = o.pod.StartProcess(t, name, ProcOpts{}, bin, args...)
	} else {
		c.Process = StartProcess(t, name, bin, args...)
	}
	c.waitReady()
	if o.join != nil {
		for _, a := range []*Consul{c, o.join} {
			a.WaitReady(consulReadyTimeout, func() error { return a.hasDatacenters(c.dc, o.join.dc) })
		}
	}
	return c
}

// Addr is the HTTP API address, host:port.
func (c *Consul) Addr() string { return net.JoinHostPort(c.host, strconv.Itoa(c.httpPort)) }

// WANAddr is the address of the agent's Serf WAN pool, host:port (what
// -retry-join-wan takes).
func (c *Consul) WANAddr() string { return net.JoinHostPort(c.host, strconv.Itoa(c.wanPort)) }

// Datacenter is the agent's datacenter.
func (c *Consul) Datacenter() string { return c.dc }

// Pod is the pod the agent runs in; nil on loopback.
func (c *Consul) Pod() *Pod { return c.pod }

// hasDatacenters reports an error unless the agent's catalog lists every dc.
func (c *Consul) hasDatacenters(dcs ...string) error {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var got []string
	if err := getJSON(hc, "http://"+c.Addr()+"/v1/catalog/datacenters", &got); err != nil {
		return err
	}
	for _, dc := range dcs {
		if !slices.Contains(got, dc) {
			return fmt.Errorf("consul %s knows datacenters %v, not yet %s", c.dc, got, dc)
		}
	}
	return nil
}

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
