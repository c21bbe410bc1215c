package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Pods is a private network of "hosts" on this machine, for tests that need
// several: each pod is a network namespace with its own addresses, joined to
// the others by a bridge that lives in a namespace of its own, so nothing in
// the root namespace (its firewall, its routes) sits between two pods.
//
// A harness owns one /24 of 198.18.0.0/15 (the RFC 2544 benchmarking range)
// and, where the kernel allows IPv6, one /64 of 2001:2::/48 (RFC 5180). The
// test process reaches every pod through a veth of its own in the root
// namespace that holds the harness's first address (HostIP, HostIP6); the
// only routes that adds are the connected routes of that /24 and /64. Pods
// get .2, .3, ... in the order they are added; .200 to .254 are never
// assigned (VirtualIP), for tests that need an address nobody owns. Pods
// have no default route: they reach their subnet only.
//
// Everything is removed when the test ends: the pods' and the bridge's
// namespaces and the root-namespace veth. A harness claims its subnet with
// an exclusive flock on a file under /run/sidemesh-testenv, which the kernel
// releases when the owner exits, however it exits; so several test binaries
// (go test runs packages in parallel) get distinct subnets, and whatever a
// crashed run left behind is swept by the next harness that finds its lock
// free.
//
// Creating namespaces needs Linux, root and iproute2 (`ip`), and setpriv
// (util-linux) to run a command as another user. Without them NewPods skips
// the test with the reason, or fails it when SIDEMESH_REQUIRE_TOOLS is set.
type Pods struct {
	t   testing.TB
	idx int // the subnet index, 0..podsSubnets-1

	// Subnet is the harness's /24 and HostIP the root namespace's address
	// in it, which pods reach the test process at.
	Subnet netip.Prefix
	HostIP netip.Addr
	// Subnet6 and HostIP6 are the IPv6 counterparts, invalid (the zero
	// value) when IPv6 is unavailable; NoIPv6 then says why.
	Subnet6 netip.Prefix
	HostIP6 netip.Addr
	NoIPv6  error

	bridgeNS string // the namespace holding the bridge
	hostLink string // the veth in the root namespace
	lock     *os.File

	mu      sync.Mutex
	pods    []*Pod
	created []string // namespaces to delete, in creation order
	linked  bool     // hostLink exists
}

// Pod is one network namespace of a Pods harness: a "host" with its own
// loopback (up) and an eth0 on the harness's bridge.
type Pod struct {
	Name string     // as given to Add
	NS   string     // the network namespace's name (ip netns)
	IP   netip.Addr // its IPv4 address
	IP6  netip.Addr // its IPv6 address; invalid when the harness has no IPv6

	pods *Pods
}

// Harness layout. The subnet index picks the /24 (and the /64): index i is
// 198.18.0.0 + i*256 and 2001:2:0:i::/64.
const (
	podsSubnets    = 512 // /24s in 198.18.0.0/15
	podsFirstHost  = 2   // .1 is the root namespace's
	podsLastHost   = 199 // pods get .2 to .199
	podsFirstVIP   = 200 // .200 to .254: VirtualIP
	podsLastVIP    = 254
	podsLockDir    = "/run/sidemesh-testenv"
	podsBridgeNS   = "smbr-" // + index: the bridge's namespace
	podsPodNS      = "smp"   // + index + "-" + pod name
	podsHostLink   = "smh"   // + index: the root namespace's veth
	podsBridge     = "br0"   // in the bridge's namespace
	podsBridgeHost = "host"  // peer of the root veth, in the bridge's namespace
	podsPodLink    = "eth0"  // in a pod
	podsCmdTimeout = 30 * time.Second
)

// podName is what Add accepts as a pod name.
var podName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// NewPods creates a harness (the bridge, the root-namespace veth, the
// subnet) with no pods yet; see Pods. It is torn down when the test ends.
func NewPods(t testing.TB) *Pods {
	t.Helper()
	if err := podsSupported(); err != nil {
		podsUnavailable(t, "%v", err)
	}
	if os.Geteuid() != 0 {
		podsUnavailable(t, "pods need root to create network namespaces (running as uid %d)", os.Geteuid())
	}
	for _, tool := range []string{"ip", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			podsUnavailable(t, "pods need %s (iproute2 for ip, util-linux for setpriv; `make test` installs them with apt-get when it can): %v", tool, err)
		}
	}
	sweepStalePods(t)
	idx, lock, err := claimSubnet()
	if err != nil {
		t.Fatalf("testenv: pods: %v", err)
	}
	p := &Pods{
		t:        t,
		idx:      idx,
		lock:     lock,
		bridgeNS: podsBridgeNS + strconv.Itoa(idx),
		hostLink: podsHostLink + strconv.Itoa(idx),
	}
	p.Subnet = netip.PrefixFrom(p.v4(0), 24)
	p.HostIP = p.v4(1)
	t.Cleanup(p.close)

	// The bridge's namespace is the first thing made: failing here means this
	// machine does not allow namespaces (a container without CAP_SYS_ADMIN).
	if out, err := runIP("netns", "add", p.bridgeNS); err != nil {
		podsUnavailable(t, "this machine does not allow network namespaces (ip netns add %s: %v: %s)", p.bridgeNS, err, out)
	}
	p.created = append(p.created, p.bridgeNS)
	if err := runIPs(
		[]string{"-n", p.bridgeNS, "link", "set", "lo", "up"},
		[]string{"-n", p.bridgeNS, "link", "add", podsBridge, "type", "bridge"},
		[]string{"-n", p.bridgeNS, "link", "set", podsBridge, "up"},
	); err != nil {
		podsUnavailable(t, "this machine does not allow a bridge in a network namespace: %v", err)
	}
	if out, err := runIP("link", "add", p.hostLink, "type", "veth", "peer", "name", podsBridgeHost, "netns", p.bridgeNS); err != nil {
		podsUnavailable(t, "this machine does not allow veth pairs (ip link add %s type veth: %v: %s)", p.hostLink, err, out)
	}
	p.linked = true
	if err := runIPs(
		[]string{"-n", p.bridgeNS, "link", "set", podsBridgeHost, "master", podsBridge},
		[]string{"-n", p.bridgeNS, "link", "set", podsBridgeHost, "up"},
		[]string{"addr", "add", netip.PrefixFrom(p.HostIP, 24).String(), "dev", p.hostLink},
	); err != nil {
		t.Fatalf("testenv: pods: %v", err)
	}
	host6 := p.v6(1)
	if out, err := runIP("-6", "addr", "add", netip.PrefixFrom(host6, 64).String(), "dev", p.hostLink, "nodad"); err != nil {
		p.NoIPv6 = fmt.Errorf("the kernel refused an IPv6 address on %s: %v: %s", p.hostLink, err, out)
	} else {
		p.Subnet6 = netip.PrefixFrom(p.v6(0), 64)
		p.HostIP6 = host6
	}
	if out, err := runIP("link", "set", p.hostLink, "up"); err != nil {
		t.Fatalf("testenv: pods: ip link set %s up: %v: %s", p.hostLink, err, out)
	}
	return p
}

// podsUnavailable skips the test with the reason, or fails it when
// SIDEMESH_REQUIRE_TOOLS is set.
func podsUnavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	RequireOrSkip(t, "testenv: "+fmt.Sprintf(format, args...))
}

// v4 is host number n of the harness's /24.
func (p *Pods) v4(n int) netip.Addr {
	i := 198<<24 + 18<<16 + p.idx<<8 + n // idx 256..511 carries into 198.19
	return netip.AddrFrom4([4]byte{byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
}

// v6 is host number n of the harness's /64, 2001:2:0:idx::n.
func (p *Pods) v6(n int) netip.Addr {
	var b [16]byte
	b[0], b[1], b[3] = 0x20, 0x01, 0x02
	b[6], b[7] = byte(p.idx>>8), byte(p.idx)
	b[14], b[15] = byte(n>>8), byte(n)
	return netip.AddrFrom16(b)
}

// IPv6 reports whether pods have IPv6 addresses.
func (p *Pods) IPv6() bool { return p.HostIP6.IsValid() }

// VirtualIP returns the i-th (from 0) of the subnet's addresses no pod or
// host owns (.200 and up), e.g. a virtual IP an app dials for capture to
// redirect: it is routable inside every pod.
func (p *Pods) VirtualIP(i int) netip.Addr {
	if i < 0 || podsFirstVIP+i > podsLastVIP {
		p.t.Fatalf("testenv: pods: virtual IP %d out of range 0..%d", i, podsLastVIP-podsFirstVIP)
	}
	return p.v4(podsFirstVIP + i)
}

// VirtualIP6 is VirtualIP's IPv6 counterpart (2001:2:0:idx::c8 and up),
// invalid when the harness has no IPv6.
func (p *Pods) VirtualIP6(i int) netip.Addr {
	if !p.IPv6() {
		return netip.Addr{}
	}
	_ = p.VirtualIP(i) // range check
	return p.v6(podsFirstVIP + i)
}

// All returns the pods added so far, in order.
func (p *Pods) All() []*Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.pods)
}

// Add creates a pod: a namespace with its loopback up and an eth0 on the
// bridge holding the next free address of the subnet (and of the /64). name
// is lower-case letters, digits and dashes, unique in the harness.
func (p *Pods) Add(name string) *Pod {
	p.t.Helper()
	if !podName.MatchString(name) {
		p.t.Fatalf("testenv: pods: pod name %q: want 1 to 32 of [a-z0-9-], not starting or ending with -", name)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, o := range p.pods {
		if o.Name == name {
			p.t.Fatalf("testenv: pods: pod %q added twice", name)
		}
	}
	n := podsFirstHost + len(p.pods)
	if n > podsLastHost {
		p.t.Fatalf("testenv: pods: pod %q: the harness holds at most %d pods", name, podsLastHost-podsFirstHost+1)
	}
	pod := &Pod{Name: name, NS: podsPodNS + strconv.Itoa(p.idx) + "-" + name, IP: p.v4(n), pods: p}
	if p.IPv6() {
		pod.IP6 = p.v6(n)
	}
	if out, err := runIP("netns", "add", pod.NS); err != nil {
		p.t.Fatalf("testenv: pods: pod %q: ip netns add %s: %v: %s", name, pod.NS, err, out)
	}
	p.created = append(p.created, pod.NS)
	bridgePort := "p" + strconv.Itoa(n)
	steps := [][]string{
		{"-n", pod.NS, "link", "set", "lo", "up"},
		{"-n", p.bridgeNS, "link", "add", bridgePort, "type", "veth", "peer", "name", podsPodLink, "netns", pod.NS},
		{"-n", p.bridgeNS, "link", "set", bridgePort, "master", podsBridge},
		{"-n", p.bridgeNS, "link", "set", bridgePort, "up"},
		{"-n", pod.NS, "addr", "add", netip.PrefixFrom(pod.IP, 24).String(), "dev", podsPodLink},
	}
	if pod.IP6.IsValid() {
		steps = append(steps, []string{"-n", pod.NS, "-6", "addr", "add", netip.PrefixFrom(pod.IP6, 64).String(), "dev", podsPodLink, "nodad"})
	}
	steps = append(steps, []string{"-n", pod.NS, "link", "set", podsPodLink, "up"})
	if err := runIPs(steps...); err != nil {
		p.t.Fatalf("testenv: pods: pod %q: %v", name, err)
	}
	p.pods = append(p.pods, pod)
	return pod
}

// close removes what the harness made and releases its subnet. The root
// veth goes first and synchronously: a namespace is torn down
// asynchronously after its name is deleted.
func (p *Pods) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.linked {
		if out, err := runIP("link", "del", p.hostLink); err != nil {
			p.t.Errorf("testenv: pods cleanup: ip link del %s: %v: %s", p.hostLink, err, out)
		}
		p.linked = false
	}
	for _, ns := range slices.Backward(p.created) {
		if out, err := runIP("netns", "del", ns); err != nil {
			p.t.Errorf("testenv: pods cleanup: ip netns del %s: %v: %s", ns, err, out)
		}
	}
	p.created = nil
	if p.lock != nil {
		p.lock.Close() // releases the flock
		p.lock = nil
	}
}

// Addr is host:port of the pod's IPv4 address.
func (p *Pod) Addr(port int) string { return netip.AddrPortFrom(p.IP, uint16(port)).String() }

// Addr6 is [host]:port of the pod's IPv6 address ("" when it has none).
func (p *Pod) Addr6(port int) string {
	if !p.IP6.IsValid() {
		return ""
	}
	return netip.AddrPortFrom(p.IP6, uint16(port)).String()
}

// Command returns a command that runs name with args inside the pod (as
// root, through `ip netns exec`, which execs it: the command's process is
// the program itself, so signals reach it). Like exec.CommandContext, the
// process is killed when ctx is done; it is also killed if the test binary
// dies. Set Env, Stdout and the like on the result as usual.
func (p *Pod) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return p.CommandAs(ctx, 0, 0, name, args...)
}

// CommandAs is Command running as uid and gid with no supplementary groups
// (through setpriv), e.g. a sidecar as the proxy uid 1337 while the app
// runs as another. uid and gid 0 is root, as Command.
func (p *Pod) CommandAs(ctx context.Context, uid, gid int, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", p.execArgs(uid, gid, name, args)...)
	setDeathSignal(cmd)
	return cmd
}

// ReadableTempDir is t.TempDir opened (0755, and its parent) to every user,
// for files that a process running as another uid (CommandAs,
// ProcOpts.UID) reads, such as a sidecar's config; write the files 0644.
func ReadableTempDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	return dir
}

// ProcOpts are the optional settings of a process started in a pod.
type ProcOpts struct {
	UID, GID int      // run as this user and group (0, 0: root); see CommandAs
	Env      []string // KEY=VALUE added to the test's environment
}

// StartProcess starts path with args in the pod as a Process (log captured,
// printed if the test fails, killed when the test ends; Stop, Start,
// Signal and Wait act on the program itself).
func (p *Pod) StartProcess(t testing.TB, name string, opts ProcOpts, path string, args ...string) *Process {
	t.Helper()
	return startProcess(t, name, opts.Env, "ip", p.execArgs(opts.UID, opts.GID, path, args)...)
}

// execArgs are the arguments of `ip` that run name with args in the pod.
func (p *Pod) execArgs(uid, gid int, name string, args []string) []string {
	out := []string{"netns", "exec", p.NS}
	if uid != 0 || gid != 0 {
		// setpriv execs too; the parent-death signal, which the kernel
		// clears on a change of credentials, is set again.
		out = append(out, "setpriv", "--reuid="+strconv.Itoa(uid), "--regid="+strconv.Itoa(gid),
			"--clear-groups", "--pdeathsig", "keep")
	}
	out = append(out, name)
	return append(out, args...)
}

// Listen listens inside the pod (the socket is made in its namespace from
// the test process). address is an IP literal and port, as net.Listen takes.
func (p *Pod) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := inNetns(p.NS, func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// DialContext dials from inside the pod, as net.Dialer.DialContext does;
// address is an IP literal and port (names are not resolved in the pod).
func (p *Pod) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return nil, fmt.Errorf("dial %s from pod %s: want an IP literal, not a name", address, p.Name)
	}
	var c net.Conn
	err = inNetns(p.NS, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// HTTPClient returns a client whose connections are dialed from inside the
// pod, with a 10s timeout; its idle connections are closed when the test
// ends.
func (p *Pod) HTTPClient(t testing.TB) *http.Client {
	tr := &http.Transport{DialContext: p.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

// runIP runs ip with args, bounded by podsCmdTimeout, and returns its
// combined output.
func runIP(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), podsCmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	return bytes.TrimSpace(out), err
}

// runIPs runs each ip command in turn and stops at the first failure,
// which it reports with the command.
func runIPs(cmds ...[]string) error {
	for _, args := range cmds {
		if out, err := runIP(args...); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// sweepOnce limits the sweep of every stale harness to once per process;
// claimSubnet still sweeps the index it takes.
var sweepOnce sync.Once

// sweepStalePods deletes what crashed harnesses left: for each subnet index
// that has a namespace or a root veth of ours, if its lock can be taken (its
// owner is gone), its namespaces and veth are deleted.
func sweepStalePods(t testing.TB) {
	sweepOnce.Do(func() {
		seen := map[int]bool{}
		for _, ns := range podsNamespaces() {
			if idx, ok := podsIndexOf(ns); ok {
				seen[idx] = true
			}
		}
		for _, link := range podsHostLinks() {
			if idx, err := strconv.Atoi(strings.TrimPrefix(link, podsHostLink)); err == nil {
				seen[idx] = true
			}
		}
		for idx := range seen {
			f, err := lockSubnet(idx)
			if err != nil {
				continue // in use, or unlockable: leave it
			}
			if err := removePodsIndex(idx); err != nil {
				t.Logf("testenv: pods: sweeping what a crashed run left in subnet %d: %v", idx, err)
			}
			f.Close()
		}
	})
}

// claimSubnet takes the first subnet index whose lock is free, starting at
// one derived from the pid so parallel test binaries rarely contend, and
// removes whatever a dead owner left there. The returned file holds the lock.
func claimSubnet() (int, *os.File, error) {
	if err := os.MkdirAll(podsLockDir, 0o755); err != nil {
		return 0, nil, err
	}
	start := os.Getpid() % podsSubnets
	for i := range podsSubnets {
		idx := (start + i) % podsSubnets
		f, err := lockSubnet(idx)
		if err != nil {
			continue
		}
		if err := removePodsIndex(idx); err != nil {
			f.Close()
			return 0, nil, fmt.Errorf("subnet %d: removing what a crashed run left: %w", idx, err)
		}
		_ = f.Truncate(0)
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0) // for whoever looks
		return idx, f, nil
	}
	return 0, nil, fmt.Errorf("all %d subnets of 198.18.0.0/15 are in use (locks in %s)", podsSubnets, podsLockDir)
}

// podsLockPath is the lock file of a subnet index. Lock files are never
// removed: unlinking a lock file another process has open would let two
// owners lock two different files of the same name.
func podsLockPath(idx int) string {
	return podsLockDir + "/subnet-" + strconv.Itoa(idx) + ".lock"
}

// removePodsIndex deletes the root veth and every namespace of subnet idx.
// The caller holds its lock.
func removePodsIndex(idx int) error {
	var errs []string
	link := podsHostLink + strconv.Itoa(idx)
	if slices.Contains(podsHostLinks(), link) {
		if out, err := runIP("link", "del", link); err != nil {
			errs = append(errs, fmt.Sprintf("ip link del %s: %v: %s", link, err, out))
		}
	}
	for _, ns := range podsNamespaces() {
		if i, ok := podsIndexOf(ns); ok && i == idx {
			if out, err := runIP("netns", "del", ns); err != nil {
				errs = append(errs, fmt.Sprintf("ip netns del %s: %v: %s", ns, err, out))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// podsIndexOf returns the subnet index of one of our namespace names.
func podsIndexOf(ns string) (int, bool) {
	var digits string
	switch {
	case strings.HasPrefix(ns, podsBridgeNS):
		digits = strings.TrimPrefix(ns, podsBridgeNS)
	case strings.HasPrefix(ns, podsPodNS):
		rest := strings.TrimPrefix(ns, podsPodNS)
		d, _, ok := strings.Cut(rest, "-")
		if !ok {
			return 0, false
		}
		digits = d
	default:
		return 0, false
	}
	idx, err := strconv.Atoi(digits)
	if err != nil || idx < 0 || idx >= podsSubnets || strconv.Itoa(idx) != digits {
		return 0, false
	}
	return idx, true
}

// podsNamespaces lists the named network namespaces (ip netns list).
func podsNamespaces() []string {
	out, err := runIP("netns", "list")
	if err != nil {
		return nil
	}
	var names []string
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

// podsHostLinks lists the root namespace's interfaces named like our veths.
func podsHostLinks() []string {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var names []string
	for _, ifc := range ifs {
		if rest, ok := strings.CutPrefix(ifc.Name, podsHostLink); ok {
			if n, err := strconv.Atoi(rest); err == nil && strconv.Itoa(n) == rest {
				names = append(names, ifc.Name)
			}
		}
	}
	return names
}
