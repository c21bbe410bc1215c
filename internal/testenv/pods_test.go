package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// podHelperEnv makes the test binary, re-exec'd inside a pod, GET the URL
// it holds, print the body and exit (see TestMain).
const podHelperEnv = "SIDEMESH_TESTENV_POD_HELPER"

// podHelper is the re-exec'd test binary's job: GET url, print the body.
func podHelper(url string) int {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "GET %s: %s %v\n", url, resp.Status, err)
		return 1
	}
	os.Stdout.Write(body)
	return 0
}

// serveRemoteHost serves, on ln, the client's address as the server saw
// it: which pod (or the host) a request came from. It stops when the test
// ends.
func serveRemoteHost(t *testing.T, ln net.Listener) {
	t.Helper()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		io.WriteString(w, host)
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
}

func podListen(t *testing.T, pod *Pod, addr string) net.Listener {
	t.Helper()
	ln, err := pod.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s in pod %s: %v", addr, pod.Name, err)
	}
	return ln
}

func getBody(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v: %s", url, resp.Status, err, body)
	}
	return string(body)
}

// rootRoutes lists the root namespace's routes (IPv4 and IPv6, main table)
// on interfaces other than the pods harnesses' own veths.
func rootRoutes(t *testing.T) []string {
	t.Helper()
	var routes []string
	for _, family := range []string{"-4", "-6"} {
		out, err := runIP(family, "-o", "route", "show")
		if err != nil {
			t.Fatalf("ip %s route show: %v: %s", family, err, out)
		}
		for line := range strings.Lines(string(out)) {
			if !strings.Contains(line, " dev "+podsHostLink) {
				routes = append(routes, strings.TrimSpace(line))
			}
		}
	}
	return routes
}

// netnsInode is the inode that identifies a named network namespace.
func netnsInode(t *testing.T, ns string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+ns, &st); err != nil {
		t.Fatalf("stat netns %s: %v", ns, err)
	}
	return st.Ino
}

func TestPodsNetwork(t *testing.T) {
	before := rootRoutes(t)
	pods := NewPods(t)
	a, b := pods.Add("a"), pods.Add("b")
	ctx := t.Context()

	benchmarking := netip.MustParsePrefix("198.18.0.0/15")
	for _, pod := range []*Pod{a, b} {
		if !benchmarking.Contains(pod.IP) || !pods.Subnet.Contains(pod.IP) || pod.IP == pods.HostIP {
			t.Errorf("pod %s: IP %s, want an address of %s (in %s) other than the host's %s", pod.Name, pod.IP, pods.Subnet, benchmarking, pods.HostIP)
		}
	}
	if all := pods.All(); len(all) != 2 || all[0] != a || all[1] != b {
		t.Errorf("All() = %v, want [a b]", all)
	}
	if a.IP == b.IP || a.NS == b.NS {
		t.Fatalf("pods a and b share an address or a namespace: %+v %+v", a, b)
	}
	if got, want := a.Addr(8080), a.IP.String()+":8080"; got != want {
		t.Errorf("Addr(8080) = %q, want %q", got, want)
	}
	serveRemoteHost(t, podListen(t, a, a.Addr(8080)))

	t.Run("pod to pod, a process in the pod", func(t *testing.T) {
		cmd := b.Command(ctx, os.Args[0])
		cmd.Env = append(os.Environ(), podHelperEnv+"=http://"+a.Addr(8080)+"/")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("helper in pod b: %v: %s", err, stderr.String())
		}
		if string(out) != b.IP.String() {
			t.Fatalf("a saw the request from %q, want pod b's %s", out, b.IP)
		}
	})
	t.Run("pod to pod, dialed from the test", func(t *testing.T) {
		if got := getBody(t, b.HTTPClient(t), "http://"+a.Addr(8080)+"/"); got != b.IP.String() {
			t.Fatalf("a saw the request from %q, want pod b's %s", got, b.IP)
		}
	})
	t.Run("root namespace to pod", func(t *testing.T) {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		if got := getBody(t, c, "http://"+a.Addr(8080)+"/"); got != pods.HostIP.String() {
			t.Fatalf("a saw the test process as %q, want the host address %s", got, pods.HostIP)
		}
	})
	t.Run("pod to root namespace", func(t *testing.T) {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(pods.HostIP, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		serveRemoteHost(t, ln)
		if got := getBody(t, b.HTTPClient(t), "http://"+ln.Addr().String()+"/"); got != b.IP.String() {
			t.Fatalf("the test process saw pod b as %q, want %s", got, b.IP)
		}
	})
	t.Run("loopback is up", func(t *testing.T) {
		ln := podListen(t, b, "127.0.0.1:0")
		defer ln.Close()
		c, err := b.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("dial pod b's own loopback: %v", err)
		}
		c.Close()
	})
	t.Run("command runs as the program, in the pod, as the user", func(t *testing.T) {
		want := strconv.FormatUint(netnsInode(t, b.NS), 10)
		for _, tc := range []struct {
			name       string
			cmd        *exec.Cmd
			uid, gid   string
			wantGroups string
		}{
			{"root", b.Command(ctx, "sh", "-c", "readlink /proc/self/ns/net; grep -E '^(Uid|Gid):' /proc/self/status"), "0", "0", ""},
			{"proxy uid", b.CommandAs(ctx, 1337, 1338, "sh", "-c", "readlink /proc/self/ns/net; grep -E '^(Uid|Gid|Groups):' /proc/self/status"), "1337", "1338", "Groups:"},
		} {
			out, err := tc.cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v: %s", tc.name, err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) < 3 || lines[0] != "net:["+want+"]" {
				t.Fatalf("%s: ran in %q, want pod b's namespace net:[%s]\n%s", tc.name, lines[0], want, out)
			}
			if f := strings.Fields(lines[1]); len(f) != 5 || f[1] != tc.uid || f[2] != tc.uid || f[3] != tc.uid || f[4] != tc.uid {
				t.Errorf("%s: %q, want real, effective, saved and fs uid %s", tc.name, lines[1], tc.uid)
			}
			if f := strings.Fields(lines[2]); len(f) != 5 || f[1] != tc.gid || f[4] != tc.gid {
				t.Errorf("%s: %q, want gid %s", tc.name, lines[2], tc.gid)
			}
			if tc.wantGroups != "" && (len(lines) != 4 || strings.TrimSpace(lines[3]) != tc.wantGroups) {
				t.Errorf("%s: supplementary groups %q, want none", tc.name, lines[3:])
			}
		}

		// ip and setpriv exec: the started process is the program itself,
		// so a signal sent to it reaches the program.
		cmd := b.CommandAs(ctx, 1337, 1337, "sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		defer cmd.Process.Kill()
		var comm string
		Eventually(t, 10*time.Second, "the command exec'd sleep", func() error {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
			if comm = strings.TrimSpace(string(data)); err != nil || comm != "sleep" {
				return fmt.Errorf("pid %d is %q (%v)", cmd.Process.Pid, comm, err)
			}
			return nil
		})
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Fatalf("sleep after SIGTERM: %v, want killed by SIGTERM", err)
		}
	})
	t.Run("StartProcess with user and environment", func(t *testing.T) {
		file := filepath.Join(ReadableTempDir(t), "config")
		if err := os.WriteFile(file, []byte("readable"), 0o644); err != nil {
			t.Fatal(err)
		}
		p := b.StartProcess(t, "env-check", ProcOpts{UID: 1337, GID: 1337, Env: []string{"POD_IP=" + b.IP.String()}},
			"sh", "-c", `echo "$POD_IP $(id -u) $(id -g) $(cat "$0")"`, file)
		if code, err := p.Wait(10 * time.Second); err != nil || code != 0 {
			t.Fatalf("exit %d, %v: %s", code, err, p.Log())
		}
		if got, want := p.Log(), b.IP.String()+" 1337 1337 readable\n"; got != want {
			t.Fatalf("output %q, want %q", got, want)
		}
	})
	t.Run("IPv6 between pods", func(t *testing.T) {
		if !pods.IPv6() {
			t.Skipf("skipped: no IPv6 in pods here: %v", pods.NoIPv6)
		}
		benchmarking6 := netip.MustParsePrefix("2001:2::/48")
		if !benchmarking6.Contains(a.IP6) || !pods.Subnet6.Contains(a.IP6) || !pods.Subnet6.Contains(b.IP6) {
			t.Fatalf("pod addresses %s, %s: want addresses of %s in %s", a.IP6, b.IP6, pods.Subnet6, benchmarking6)
		}
		serveRemoteHost(t, podListen(t, a, a.Addr6(8081)))
		if got := getBody(t, b.HTTPClient(t), "http://"+a.Addr6(8081)+"/"); got != b.IP6.String() {
			t.Fatalf("a saw the request from %q, want pod b's %s", got, b.IP6)
		}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		if got := getBody(t, c, "http://"+a.Addr6(8081)+"/"); got != pods.HostIP6.String() {
			t.Fatalf("a saw the test process as %q, want the host address %s", got, pods.HostIP6)
		}
	})
	t.Run("a virtual IP routes inside a pod", func(t *testing.T) {
		vip := pods.VirtualIP(0)
		if !pods.Subnet.Contains(vip) || vip == a.IP || vip == b.IP {
			t.Fatalf("VirtualIP(0) = %s, want an unassigned address of %s", vip, pods.Subnet)
		}
		// Nobody owns it: the dial is routed onto the bridge and fails there
		// (no ARP answer) rather than with "network is unreachable".
		dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err := b.DialContext(dctx, "tcp", netip.AddrPortFrom(vip, 80).String())
		if err == nil || errors.Is(err, syscall.ENETUNREACH) {
			t.Fatalf("dial the virtual IP from pod b: %v, want a timeout on the bridge", err)
		}
	})
	t.Run("routes only for the harness's subnets", func(t *testing.T) {
		out, err := runIP("-4", "-o", "route", "show", "dev", pods.hostLink)
		if err != nil {
			t.Fatal(err)
		}
		if lines := strings.Split(string(out), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], pods.Subnet.String()+" ") {
			t.Errorf("IPv4 routes on %s: %q, want only %s", pods.hostLink, out, pods.Subnet)
		}
		if pods.IPv6() {
			out, err := runIP("-6", "-o", "route", "show", "dev", pods.hostLink)
			if err != nil {
				t.Fatal(err)
			}
			for line := range strings.Lines(string(out)) {
				if !strings.HasPrefix(line, pods.Subnet6.String()+" ") && !strings.HasPrefix(line, "fe80::/64 ") {
					t.Errorf("IPv6 route on %s: %q, want only %s (and link-local)", pods.hostLink, line, pods.Subnet6)
				}
			}
		}
		if after := rootRoutes(t); !slices.Equal(before, after) {
			t.Errorf("the root namespace's other routes changed:\nbefore %q\nafter  %q", before, after)
		}
	})
}

func TestPodsCleanupAndParallelHarnesses(t *testing.T) {
	NewPods(t) // skips here when pods cannot be made
	type made struct {
		idx    int
		subnet netip.Prefix
		names  []string
	}
	var (
		mu   sync.Mutex
		seen []made
	)
	t.Run("group", func(t *testing.T) {
		for i := range 2 {
			t.Run(strconv.Itoa(i), func(t *testing.T) {
				t.Parallel()
				p := NewPods(t)
				x, y := p.Add("x"), p.Add("y")
				if c, err := x.DialContext(t.Context(), "tcp", y.Addr(9)); err == nil {
					c.Close() // a refusal is the answer expected; a connection is fine too
				} else if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("dial y from x: %v, want connection refused (reachable, nothing listening)", err)
				}
				mu.Lock()
				seen = append(seen, made{p.idx, p.Subnet, []string{p.bridgeNS, x.NS, y.NS}})
				mu.Unlock()
			})
		}
	})
	if len(seen) != 2 {
		t.Fatalf("%d harnesses made, want 2", len(seen))
	}
	if seen[0].idx == seen[1].idx || seen[0].subnet.Overlaps(seen[1].subnet) {
		t.Fatalf("parallel harnesses share a subnet: %+v", seen)
	}
	names := podsNamespaces()
	links := podsHostLinks()
	for _, m := range seen {
		for _, ns := range m.names {
			if slices.Contains(names, ns) {
				t.Errorf("namespace %s left behind (ip netns list: %v)", ns, names)
			}
		}
		if link := podsHostLink + strconv.Itoa(m.idx); slices.Contains(links, link) {
			t.Errorf("root veth %s left behind", link)
		}
		f, err := lockSubnet(m.idx)
		if err != nil {
			t.Errorf("subnet %d still locked after its harness ended: %v", m.idx, err)
			continue
		}
		f.Close()
	}
}

func TestPodsIsolatedFromEachOther(t *testing.T) {
	p1, p2 := NewPods(t), NewPods(t)
	x1, x2 := p1.Add("x"), p2.Add("x")
	if x1.NS == x2.NS || p1.Subnet.Overlaps(p2.Subnet) {
		t.Fatalf("two harnesses overlap: %s in %s, %s in %s", x1.NS, p1.Subnet, x2.NS, p2.Subnet)
	}
	ln := podListen(t, x2, x2.Addr(8080))
	defer ln.Close()
	_, err := x1.DialContext(t.Context(), "tcp", x2.Addr(8080))
	if !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("dial a pod of another harness: %v, want network unreachable", err)
	}
}

func TestPodsSweepLeftovers(t *testing.T) {
	NewPods(t) // skips here when pods cannot be made
	idx, lock, err := claimSubnet()
	if err != nil {
		t.Fatal(err)
	}
	// What a run killed mid-test leaves: the namespaces and the root veth.
	bridge, pod, link := podsBridgeNS+strconv.Itoa(idx), podsPodNS+strconv.Itoa(idx)+"-stale", podsHostLink+strconv.Itoa(idx)
	if err := runIPs(
		[]string{"netns", "add", bridge},
		[]string{"netns", "add", pod},
		[]string{"link", "add", link, "type", "veth", "peer", "name", podsBridgeHost, "netns", bridge},
	); err != nil {
		lock.Close()
		_ = removePodsIndex(idx)
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = removePodsIndex(idx) })

	// While the owner lives, its subnet is not for the taking.
	if f, err := lockSubnet(idx); err == nil {
		f.Close()
		t.Fatalf("subnet %d locked twice", idx)
	}
	lock.Close() // the owner dies: the kernel drops its lock

	f, err := lockSubnet(idx)
	if err != nil {
		t.Fatalf("subnet %d still locked after its owner closed the lock: %v", idx, err)
	}
	defer f.Close()
	if err := removePodsIndex(idx); err != nil {
		t.Fatal(err)
	}
	names := podsNamespaces()
	for _, ns := range []string{bridge, pod} {
		if slices.Contains(names, ns) {
			t.Errorf("stale namespace %s not swept: %v", ns, names)
		}
	}
	if slices.Contains(podsHostLinks(), link) {
		t.Errorf("stale root veth %s not swept", link)
	}
}

func TestPodsAddresses(t *testing.T) {
	for _, tc := range []struct {
		idx, n int
		v4, v6 string
	}{
		{0, 1, "198.18.0.1", "2001:2::1"},
		{7, 2, "198.18.7.2", "2001:2:0:7::2"},
		{255, 254, "198.18.255.254", "2001:2:0:ff::fe"},
		{256, 2, "198.19.0.2", "2001:2:0:100::2"},
		{511, 199, "198.19.255.199", "2001:2:0:1ff::c7"},
	} {
		p := &Pods{idx: tc.idx}
		if got := p.v4(tc.n).String(); got != tc.v4 {
			t.Errorf("subnet %d host %d: %s, want %s", tc.idx, tc.n, got, tc.v4)
		}
		if got := p.v6(tc.n).String(); got != tc.v6 {
			t.Errorf("subnet %d host %d: %s, want %s", tc.idx, tc.n, got, tc.v6)
		}
	}
	for _, tc := range []struct {
		ns  string
		idx int
		ok  bool
	}{
		{"smbr-0", 0, true},
		{"smbr-511", 511, true},
		{"smp12-consul", 12, true},
		{"smp12-api-1", 12, true},
		{"smbr-512", 0, false},
		{"smbr-07", 0, false},
		{"smp-x", 0, false},
		{"smpx-1", 0, false},
		{"other", 0, false},
	} {
		idx, ok := podsIndexOf(tc.ns)
		if idx != tc.idx || ok != tc.ok {
			t.Errorf("podsIndexOf(%q) = %d, %v; want %d, %v", tc.ns, idx, ok, tc.idx, tc.ok)
		}
	}
}

func TestPodsConsul(t *testing.T) {
	pods := NewPods(t)
	pc, app := pods.Add("consul"), pods.Add("app")
	c := StartConsul(t, ConsulInPod(pc))
	if c.Addr() != pc.Addr(ConsulHTTPPort) || c.Pod() != pc {
		t.Fatalf("Addr() = %s, want %s", c.Addr(), pc.Addr(ConsulHTTPPort))
	}
	client := c.Client(t)
	leader, err := client.Status().Leader()
	if err != nil || leader != pc.Addr(consulServerPort) {
		t.Fatalf("leader seen from the test process: %q, %v; want %s", leader, err, pc.Addr(consulServerPort))
	}
	if got := getBody(t, app.HTTPClient(t), "http://"+c.Addr()+"/v1/status/leader"); strings.TrimSpace(got) != strconv.Quote(pc.Addr(consulServerPort)) {
		t.Fatalf("leader seen from pod app: %s, want %q", got, pc.Addr(consulServerPort))
	}
	if pods.IPv6() {
		url := "http://" + pc.Addr6(ConsulHTTPPort) + "/v1/status/leader"
		if got := getBody(t, app.HTTPClient(t), url); strings.TrimSpace(got) != strconv.Quote(pc.Addr(consulServerPort)) {
			t.Fatalf("GET %s from pod app: %s", url, got)
		}
	}
	node, _, err := client.Catalog().Node(ConsulNode, nil)
	if err != nil || node == nil || node.Node.Address != pc.IP.String() {
		t.Fatalf("the agent's node: %+v, %v; want address %s", node, err, pc.IP)
	}

	// A health check runs from the agent's host and reaches another pod.
	checkedFrom := make(chan string, 100)
	ln := podListen(t, app, app.Addr(8080))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		select {
		case checkedFrom <- host:
		default:
		}
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	defer func() { srv.Close(); <-done }()
	reg := &api.AgentServiceRegistration{ID: "app-1", Name: "app", Address: app.IP.String(), Port: 8080,
		Check: &api.AgentServiceCheck{HTTP: "http://" + app.Addr(8080) + "/health", Interval: "1s", Timeout: "2s"}}
	if err := client.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("register: %v", err)
	}
	Eventually(t, consulReadyTimeout, "app-1's check passing", func() error {
		checks, _, err := client.Health().Checks("app", nil)
		if err != nil {
			return err
		}
		if len(checks) != 1 || checks[0].Status != api.HealthPassing {
			return fmt.Errorf("checks %+v", checks)
		}
		return nil
	})
	if from := <-checkedFrom; from != pc.IP.String() {
		t.Fatalf("the check came from %s, want the agent's pod %s", from, pc.IP)
	}
}

func TestPodsConsulWAN(t *testing.T) {
	pods := NewPods(t)
	c1 := StartConsul(t, ConsulInPod(pods.Add("consul-dc1")))
	c2 := StartConsul(t, ConsulInPod(pods.Add("consul-dc2")), ConsulDatacenter("dc2"), ConsulJoinWAN(c1))
	checkWANFederation(t, c1, c2)
}

// checkWANFederation checks that c1 (dc1) answers for a service registered
// in c2 (dc2) when asked for dc2.
func checkWANFederation(t *testing.T, c1, c2 *Consul) {
	t.Helper()
	if c1.Datacenter() != "dc1" || c2.Datacenter() != "dc2" {
		t.Fatalf("datacenters %s and %s, want dc1 and dc2", c1.Datacenter(), c2.Datacenter())
	}
	reg := &api.AgentServiceRegistration{ID: "api-1", Name: "api", Address: "198.18.0.9", Port: 8080}
	if err := c2.Client(t).Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("register in dc2: %v", err)
	}
	client := c1.Client(t)
	Eventually(t, consulReadyTimeout, "api in dc2 seen through dc1", func() error {
		svcs, _, err := client.Catalog().Service("api", "", &api.QueryOptions{Datacenter: "dc2"})
		if err != nil {
			return err
		}
		if len(svcs) != 1 || svcs[0].Datacenter != "dc2" {
			return fmt.Errorf("got %+v", svcs)
		}
		return nil
	})
	if svcs, _, err := client.Catalog().Service("api", "", nil); err != nil || len(svcs) != 0 {
		t.Fatalf("api in dc1: %d instances, %v; want none", len(svcs), err)
	}
}

func TestPodsJaeger(t *testing.T) {
	pods := NewPods(t)
	pj, app := pods.Add("jaeger"), pods.Add("app")
	j := StartJaeger(t, JaegerInPod(pj))
	if j.OTLPHTTPAddr() != pj.Addr(JaegerOTLPHTTPPort) || j.QueryURL() != "http://"+pj.Addr(JaegerQueryHTTPPort) || j.Pod() != pj {
		t.Fatalf("addresses %s, %s: want pod jaeger's", j.OTLPHTTPAddr(), j.QueryURL())
	}
	// A span sent from pod app over OTLP/HTTP, read back from the test process.
	hc := app.HTTPClient(t)
	exp, err := otlptracehttp.New(t.Context(), otlptracehttp.WithEndpoint(j.OTLPHTTPAddr()), otlptracehttp.WithInsecure(),
		otlptracehttp.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "pods-app"))))
	_, span := tp.Tracer("testenv").Start(t.Context(), "from-app")
	span.End()
	sctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := tp.Shutdown(sctx); err != nil {
		t.Fatalf("export from pod app: %v", err)
	}
	spans := j.Trace(t, span.SpanContext().TraceID().String(), 1)
	if spans[0].Service != "pods-app" || spans[0].Operation != "from-app" {
		t.Fatalf("got %+v", spans)
	}
	// The query API from another pod; OTLP/gRPC accepts connections there too.
	if body := getBody(t, hc, j.QueryURL()+"/api/services"); !strings.Contains(body, `"pods-app"`) {
		t.Fatalf("services seen from pod app: %s", body)
	}
	conn, err := app.DialContext(t.Context(), "tcp", j.OTLPGRPCAddr())
	if err != nil {
		t.Fatalf("OTLP/gRPC from pod app: %v", err)
	}
	conn.Close()
}

// recordTB records what podsUnavailable does to a test; Fatal and Skip end
// the calling goroutine, as testing's do.
type recordTB struct {
	testing.TB
	fatal, skip string
}

func (r *recordTB) Helper() {}
func (r *recordTB) Fatal(args ...any) {
	r.fatal = fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *recordTB) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recordTB) Skip(args ...any) {
	r.skip = fmt.Sprint(args...)
	runtime.Goexit()
}

func TestPodsUnavailableSkipsOrFails(t *testing.T) {
	for _, tc := range []struct {
		require   string
		fatal     bool
		wantInMsg string
	}{
		{"", false, "no namespaces: operation not permitted"},
		{"1", true, "SIDEMESH_REQUIRE_TOOLS is set, so this is a failure"},
	} {
		t.Setenv("SIDEMESH_REQUIRE_TOOLS", tc.require)
		r := &recordTB{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			podsUnavailable(r, "no namespaces: %v", syscall.EPERM)
		}()
		<-done
		got, other := r.skip, r.fatal
		if tc.fatal {
			got, other = r.fatal, r.skip
		}
		if !strings.Contains(got, tc.wantInMsg) || !strings.Contains(got, "operation not permitted") || other != "" {
			t.Errorf("SIDEMESH_REQUIRE_TOOLS=%q: skip %q, fatal %q; want the reason in the %s", tc.require, r.skip, r.fatal,
				map[bool]string{true: "failure", false: "skip"}[tc.fatal])
		}
	}
}

func TestPodsAddRejects(t *testing.T) {
	pods := NewPods(t)
	pods.Add("app")
	r := &recordTB{TB: t}
	pods.t = r // Add reports through the harness's test
	for _, tc := range []struct{ name, want string }{
		{"App", `pod name "App"`},
		{"-x", `pod name "-x"`},
		{"a_b", `pod name "a_b"`},
		{strings.Repeat("a", 33), "1 to 32"},
		{"app", `pod "app" added twice`},
	} {
		r.fatal = ""
		done := make(chan struct{})
		go func() {
			defer close(done)
			pods.Add(tc.name)
		}()
		<-done
		if !strings.Contains(r.fatal, tc.want) {
			t.Errorf("Add(%q): failure %q, want one naming %s", tc.name, r.fatal, tc.want)
		}
	}
	if n := len(pods.All()); n != 1 {
		t.Errorf("%d pods after the rejected adds, want 1", n)
	}
}
