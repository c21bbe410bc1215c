package capture

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/testenv"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// The namespaces' addresses: the pod (where the rules go) and a peer host
// joined to it by a veth pair. Only 198.18.0.0/15 and 2001:2::/48.
const (
	podV4, peerV4, peerV4Excluded = "198.18.0.1", "198.18.0.2", "198.18.0.3"
	podV6, peerV6, peerV6Excluded = "2001:2::1", "2001:2::2", "2001:2::3"
)

var integrationConfig = Config{
	ProxyPort:    15001,
	ProxyUID:     1337,
	InboundPort:  15006,
	InboundPorts: []uint16{8080},
	ExcludePorts: []uint16{9090},
	ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix(peerV4Excluded + "/32"), netip.MustParsePrefix(peerV6Excluded + "/128")},
	ExcludeUIDs:  []uint32{1338},
	IPv6:         true,
}

// unavailable skips the test with reason, or fails it when
// SIDEMESH_REQUIRE_TOOLS is set (CI runs as root).
func unavailable(t *testing.T, reason string) {
	t.Helper()
	testenv.RequireOrSkip(t, reason)
}

// netns is a network namespace the test created with `ip netns add`.
type netns struct {
	name string
	fd   int // open /run/netns/NAME
}

func newNetns(t *testing.T, name string) *netns {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		unavailable(t, fmt.Sprintf("this machine does not allow network namespaces (ip netns add %s: %v: %s)", name, err, strings.TrimSpace(string(out))))
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	return &netns{name: name, fd: fd}
}

// do runs fn on an OS thread that has joined the namespace; the thread is
// never handed back to the scheduler (the goroutine exits locked, so the
// runtime discards it), so fn may also change the thread's credentials.
func (n *netns) do(fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns %s: %w", n.name, err)
			return
		}
		done <- fn()
	}()
	return <-done
}

func (n *netns) ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", n.name, strings.Join(args, " "), err, out)
	}
}

// serve listens on network/addr inside the namespace; every accepted
// connection is answered with "NAME ORIGDST\n" (ORIGDST from
// SO_ORIGINAL_DST, or the local address when the connection was not
// redirected) and closed.
func (n *netns) serve(t *testing.T, name, network, addr string) {
	t.Helper()
	var ln net.Listener
	if err := n.do(func() (err error) { ln, err = net.Listen(network, addr); return err }); err != nil {
		t.Fatalf("%s: listen %s %s: %v", n.name, network, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", name, originalDst(c.(*net.TCPConn)))
			c.Close()
		}
	}()
}

// originalDst reads SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6).
func originalDst(c *net.TCPConn) string {
	raw, err := c.SyscallConn()
	if err != nil {
		return c.LocalAddr().String()
	}
	out := c.LocalAddr().String()
	_ = raw.Control(func(fd uintptr) {
		if netip.MustParseAddrPort(c.LocalAddr().String()).Addr().Is4() {
			m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
			if err == nil { // struct sockaddr_in
				b := m.Multiaddr
				out = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4])).String()
			}
			return
		}
		m, err := unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, ip6tSoOriginalDst)
		if err == nil { // struct sockaddr_in6
			var port [2]byte
			binary.NativeEndian.PutUint16(port[:], m.Addr.Port)
			out = netip.AddrPortFrom(netip.AddrFrom16(m.Addr.Addr), binary.BigEndian.Uint16(port[:])).String()
		}
	})
	return out
}

// dial connects to addr from inside the namespace with a socket owned by
// uid, and returns the line the listener that accepted it answered.
func (n *netns) dial(uid uint32, addr string) (string, error) {
	var line string
	err := n.do(func() error {
		if uid != 0 {
			// This thread only (a raw syscall, not syscall.Setresuid, which
			// would change every thread): the socket's owner is the
			// thread's fsuid, which follows the effective uid.
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
				return fmt.Errorf("setresuid(-1, %d, -1): %w", uid, e)
			}
		}
		c, err := net.DialTimeout("tcp", addr, 20*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
		line = strings.TrimSpace(line)
		return err
	})
	return line, err
}

// pod sets up the pod and peer namespaces joined by a veth pair, with the
// test's listeners in both.
func setupPods(t *testing.T) (pod, peer *netns) {
	t.Helper()
	if os.Geteuid() != 0 {
		unavailable(t, "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces and program nf_tables")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		unavailable(t, "the ip command (iproute2) is not installed")
	}
	pod = newNetns(t, fmt.Sprintf("sidemesh-cap-pod-%d", os.Getpid()))
	peer = newNetns(t, fmt.Sprintf("sidemesh-cap-peer-%d", os.Getpid()))
	pod.ip(t, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer.name)
	for _, ns := range []struct {
		n     *netns
		addrs []string
	}{
		{pod, []string{podV4 + "/24", podV6 + "/64"}},
		{peer, []string{peerV4 + "/24", peerV4Excluded + "/24", peerV6 + "/64", peerV6Excluded + "/64"}},
	} {
		ns.n.ip(t, "link", "set", "lo", "up")
		for _, a := range ns.addrs {
			if strings.Contains(a, ":") {
				ns.n.ip(t, "-6", "addr", "add", a, "dev", "eth0", "nodad")
			} else {
				ns.n.ip(t, "addr", "add", a, "dev", "eth0")
			}
		}
		ns.n.ip(t, "link", "set", "eth0", "up")
	}
	for _, fam := range []struct{ network, any, loopback string }{{"tcp4", "0.0.0.0", "127.0.0.1"}, {"tcp6", "::", "::1"}} {
		hp := func(host string, port int) string { return net.JoinHostPort(host, fmt.Sprint(port)) }
		pod.serve(t, "proxy", fam.network, hp(fam.loopback, 15001))
		pod.serve(t, "inbound", fam.network, hp(fam.any, 15006))
		pod.serve(t, "app", fam.network, hp(fam.any, 8080))
		pod.serve(t, "app", fam.network, hp(fam.any, 7070))
		pod.serve(t, "app", fam.network, hp(fam.any, 9090))
		peer.serve(t, "peer", fam.network, hp(fam.any, 8080))
		peer.serve(t, "peer", fam.network, hp(fam.any, 9090))
	}
	return pod, peer
}

// listTables reads back, through netlink, every sidemesh table in the
// namespace: family → chain name → rules' expressions.
func listTables(t *testing.T, ns *netns) map[nftables.TableFamily]map[string][]*nftables.Rule {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(ns.fd))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatalf("listing tables: %v", err)
	}
	out := map[nftables.TableFamily]map[string][]*nftables.Rule{}
	for _, tb := range tables {
		if tb.Name != TableName {
			continue
		}
		chains, err := c.ListChainsOfTableFamily(tb.Family)
		if err != nil {
			t.Fatal(err)
		}
		out[tb.Family] = map[string][]*nftables.Rule{}
		for _, ch := range chains {
			if ch.Table.Name != TableName {
				continue
			}
			if ch.Type != nftables.ChainTypeNAT || ch.Priority == nil || *ch.Priority != *nftables.ChainPriorityNATDest {
				t.Errorf("chain family %d %s: type %q priority %v, want nat dstnat", tb.Family, ch.Name, ch.Type, ch.Priority)
			}
			rules, err := c.GetRules(tb, ch)
			if err != nil {
				t.Fatal(err)
			}
			out[tb.Family][ch.Name] = rules
		}
	}
	return out
}

// checkInstalled compares what the kernel holds with rs.
func checkInstalled(t *testing.T, ns *netns, rs Ruleset) {
	t.Helper()
	got := listTables(t, ns)
	if len(got) != len(rs.Tables) {
		t.Fatalf("kernel holds sidemesh tables for %d families, want %d (%v)", len(got), len(rs.Tables), rs.Families())
	}
	for _, tb := range rs.Tables {
		chains := got[nftFamily(tb.Family)]
		if len(chains) != len(tb.Chains) {
			t.Fatalf("table %s %s: %d chains in the kernel, want %d", tb.Family, TableName, len(chains), len(tb.Chains))
		}
		for _, ch := range tb.Chains {
			rules := chains[ch.Hook.String()]
			if len(rules) != len(ch.Rules) {
				t.Fatalf("chain %s %s: %d rules in the kernel, want %d", tb.Family, ch.Hook, len(rules), len(ch.Rules))
			}
			for i, r := range ch.Rules {
				if want := Exprs(r, tb.Family); !reflect.DeepEqual(rules[i].Exprs, want) {
					t.Errorf("chain %s %s rule %d (%s): kernel holds %s, want %s", tb.Family, ch.Hook, i, r.String(tb.Family), fmtExprs(rules[i].Exprs), fmtExprs(want))
				}
			}
		}
	}
}

func fmtExprs[T any](es []T) string {
	var parts []string
	for _, e := range es {
		parts = append(parts, fmt.Sprintf("%T%+v", e, e))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func TestNetlinkCaptureInNamespace(t *testing.T) {
	pod, peer := setupPods(t)
	// --ipv6 auto: the pod has a global IPv6 address, a namespace with only
	// lo does not.
	bare := newNetns(t, fmt.Sprintf("sidemesh-cap-bare-%d", os.Getpid()))
	bare.ip(t, "link", "set", "lo", "up")
	for _, c := range []struct {
		ns   *netns
		want bool
	}{{pod, true}, {bare, false}} {
		var got bool
		if err := c.ns.do(func() error { got = HasIPv6(); return nil }); err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("HasIPv6 in %s: %v, want %v", c.ns.name, got, c.want)
		}
	}

	nl := Netlink{NetNSFd: pod.fd}
	testBackend(t, pod, peer, backend{
		install: func(rs Ruleset) error {
			err := nl.Install(rs)
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP) {
				unavailable(t, fmt.Sprintf("this kernel does not allow nf_tables nat in a network namespace: %v", err))
			}
			return err
		},
		remove:    func() error { return nl.Remove([]Family{IPv4, IPv6}) },
		installed: func(t *testing.T, rs Ruleset) { checkInstalled(t, pod, rs) },
		removed: func(t *testing.T) {
			if got := listTables(t, pod); len(got) != 0 {
				t.Fatalf("the kernel still holds sidemesh tables: %v", got)
			}
		},
	})
}

// The same scenario with the iptables backend, when the binaries exist.
func TestIptablesCaptureInNamespace(t *testing.T) {
	for _, bin := range []string{"iptables", "ip6tables"} {
		if _, err := exec.LookPath(bin); err != nil {
			unavailable(t, bin+" is not installed (the iptables backend runs it)")
		}
	}
	pod, peer := setupPods(t)
	ipt := Iptables{}
	save := func(t *testing.T, f Family) string {
		t.Helper()
		var out []byte
		err := pod.do(func() (err error) {
			out, err = exec.Command(ipt.bin(f)+"-save", "-t", "nat").CombinedOutput()
			return err
		})
		if err != nil {
			t.Fatalf("%s-save: %v: %s", ipt.bin(f), err, out)
		}
		return string(out)
	}
	testBackend(t, pod, peer, backend{
		install: func(rs Ruleset) error { return pod.do(func() error { return Run(ipt.InstallCommands(rs)) }) },
		remove: func() error {
			return pod.do(func() error { return Run(ipt.RemoveCommands([]Family{IPv4, IPv6})) })
		},
		installed: func(t *testing.T, rs Ruleset) {
			t.Helper()
			for _, tb := range rs.Tables {
				nat := save(t, tb.Family)
				for _, ch := range tb.Chains {
					name := chainName(ch.Hook)
					if got := strings.Count(nat, "-A "+name+" "); got != len(ch.Rules) {
						t.Errorf("%s: %d rules in %s, want %d:\n%s", ipt.bin(tb.Family), got, name, len(ch.Rules), nat)
					}
					if got := strings.Count(nat, "-j "+name+"\n"); got != 1 {
						t.Errorf("%s: %d jumps to %s, want 1:\n%s", ipt.bin(tb.Family), got, name, nat)
					}
				}
			}
		},
		removed: func(t *testing.T) {
			t.Helper()
			for _, f := range []Family{IPv4, IPv6} {
				if nat := save(t, f); strings.Contains(nat, "SIDEMESH") {
					t.Fatalf("%s still holds sidemesh chains:\n%s", ipt.bin(f), nat)
				}
			}
		},
	})
}

// backend is one way of programming the rules, with its own way of
// reading back what the kernel holds.
type backend struct {
	install   func(Ruleset) error
	remove    func() error
	installed func(t *testing.T, rs Ruleset) // the kernel holds exactly rs
	removed   func(t *testing.T)             // the kernel holds nothing of ours
}

// testBackend installs integrationConfig in pod and checks, over IPv4 and
// IPv6, which listener each connection lands on; then reinstalls with every
// inbound port captured, and removes.
func testBackend(t *testing.T, pod, peer *netns, b backend) {
	rs, err := Build(integrationConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.install(rs); err != nil {
		t.Fatalf("install: %v", err)
	}
	b.installed(t, rs)

	// Installing twice leaves one rule set.
	if err := b.install(rs); err != nil {
		t.Fatalf("second install: %v", err)
	}
	b.installed(t, rs)

	type hop struct {
		from *netns
		uid  uint32
		addr string
		want string
	}
	hp := func(host string, port int) string { return net.JoinHostPort(host, fmt.Sprint(port)) }
	var hops []hop
	for _, f := range []struct{ pod, peer, excluded, loopback string }{
		{podV4, peerV4, peerV4Excluded, "127.0.0.1"},
		{podV6, peerV6, peerV6Excluded, "::1"},
	} {
		hops = append(hops,
			// Outbound from the app is redirected to the transparent
			// listener, which reads the dialled address.
			hop{pod, 1000, hp(f.peer, 8080), "proxy " + hp(f.peer, 8080)},
			hop{pod, 0, hp(f.peer, 8080), "proxy " + hp(f.peer, 8080)},
			// The proxy's own traffic and --exclude-uids are not.
			hop{pod, 1337, hp(f.peer, 8080), "peer " + hp(f.peer, 8080)},
			hop{pod, 1338, hp(f.peer, 8080), "peer " + hp(f.peer, 8080)},
			// Nor --exclude-ports, --exclude-cidrs, loopback.
			hop{pod, 1000, hp(f.peer, 9090), "peer " + hp(f.peer, 9090)},
			hop{pod, 1000, hp(f.excluded, 8080), "peer " + hp(f.excluded, 8080)},
			hop{pod, 1000, hp(f.loopback, 8080), "app " + hp(f.loopback, 8080)},
			// Inbound to an app port goes to the inbound listener, the
			// original destination port kept; other ports reach the app.
			hop{peer, 0, hp(f.pod, 8080), "inbound " + hp(f.pod, 8080)},
			hop{peer, 0, hp(f.pod, 7070), "app " + hp(f.pod, 7070)},
		)
	}
	check := func(hops []hop) {
		t.Helper()
		for _, h := range hops {
			got, err := h.from.dial(h.uid, h.addr)
			if err != nil {
				t.Errorf("from %s as uid %d to %s: %v", h.from.name, h.uid, h.addr, err)
			} else if got != h.want {
				t.Errorf("from %s as uid %d to %s: landed on %q, want %q", h.from.name, h.uid, h.addr, got, h.want)
			}
		}
	}
	check(hops)

	// Reinstalling with every inbound port captured replaces the rules.
	all := integrationConfig
	all.InboundPorts, all.InboundAll = nil, true
	rsAll, err := Build(all)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.install(rsAll); err != nil {
		t.Fatalf("install with --inbound-ports '*': %v", err)
	}
	b.installed(t, rsAll)
	check([]hop{
		{peer, 0, hp(podV4, 7070), "inbound " + hp(podV4, 7070)},
		{peer, 0, hp(podV6, 7070), "inbound " + hp(podV6, 7070)},
		{peer, 0, hp(podV4, 9090), "app " + hp(podV4, 9090)},
		{peer, 0, hp(podV6, 9090), "app " + hp(podV6, 9090)},
	})

	// Remove leaves nothing, and removing again is not an error.
	for i := range 2 {
		if err := b.remove(); err != nil {
			t.Fatalf("remove #%d: %v", i+1, err)
		}
		b.removed(t)
	}
	check([]hop{
		{pod, 1000, hp(peerV4, 8080), "peer " + hp(peerV4, 8080)},
		{pod, 1000, hp(peerV6, 8080), "peer " + hp(peerV6, 8080)},
		{peer, 0, hp(podV4, 8080), "app " + hp(podV4, 8080)},
	})
}

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST from linux/netfilter_ipv6/ip6_tables.h.
const ip6tSoOriginalDst = 80
