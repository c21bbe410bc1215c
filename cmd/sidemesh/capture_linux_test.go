package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/internal/testenv"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"
)

func unavailable(t *testing.T, reason string) {
	t.Helper()
	testenv.RequireOrSkip(t, reason)
}

// The injected init container's exact args, run as the container runs them
// (root with only CAP_NET_ADMIN, no iptables binary involved) in a network
// namespace of the test's own, install the capture tables; remove, run the
// same way, deletes them; without CAP_NET_ADMIN install fails.
func TestInjectedCaptureInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		unavailable(t, "needs root to create a network namespace")
	}
	for _, tool := range []string{"ip", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			unavailable(t, tool+" is not installed (iproute2, util-linux)")
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"inject", "-f", filepath.Join("..", "..", "deploy", "kubernetes", "web.yaml"), "--image", "sidemesh:test"}, &out, &errb); code != 0 {
		t.Fatalf("inject: exit %d: %s", code, errb.String())
	}
	var doc struct {
		Spec struct {
			Template struct {
				Spec struct {
					InitContainers []struct {
						Name string   `yaml:"name"`
						Args []string `yaml:"args"`
					} `yaml:"initContainers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	ic := doc.Spec.Template.Spec.InitContainers[0]
	if ic.Name != "sidemesh-init" {
		t.Fatalf("first init container is %q", ic.Name)
	}

	ns := fmt.Sprintf("sidemesh-inject-%d", os.Getpid())
	if b, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		unavailable(t, fmt.Sprintf("this machine does not allow network namespaces (ip netns add: %v: %s)", err, bytes.TrimSpace(b)))
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sidemesh := func(caps string, args ...string) (string, error) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "setpriv", "--bounding-set=-all" + caps, "--inh-caps=-all", "--", self}, args...)...)
		cmd.Env = append(os.Environ(), "SIDEMESH_TEST_RUN_MAIN=1")
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	tables := func() []string {
		c, err := nftables.New(nftables.WithNetNSFd(fd))
		if err != nil {
			t.Fatal(err)
		}
		ts, err := c.ListTables()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, tb := range ts {
			chains, err := c.ListChainsOfTableFamily(tb.Family)
			if err != nil {
				t.Fatal(err)
			}
			for _, ch := range chains {
				rules, err := c.GetRules(tb, ch)
				if err != nil {
					t.Fatal(err)
				}
				names = append(names, fmt.Sprintf("%s/%s:%d", tb.Name, ch.Name, len(rules)))
			}
		}
		return names
	}

	if o, err := sidemesh("", ic.Args...); err == nil || !strings.Contains(o, "nftables: installing table sidemesh") {
		t.Fatalf("install without CAP_NET_ADMIN: %v: %s", err, o)
	}
	if o, err := sidemesh(",+net_admin", ic.Args...); err != nil {
		t.Fatalf("%v with only CAP_NET_ADMIN: %v: %s", ic.Args, err, o)
	}
	// The namespace has no global IPv6 address: the ip table only; output:
	// uid 1337, loopback, port 15021, redirect; prerouting: port 8080.
	if got, want := strings.Join(tables(), " "), "sidemesh/output:4 sidemesh/prerouting:1"; got != want {
		t.Fatalf("after install: chains %q, want %q", got, want)
	}
	if o, err := sidemesh(",+net_admin", "iptables", "remove"); err != nil {
		t.Fatalf("remove: %v: %s", err, o)
	}
	if got := tables(); len(got) != 0 {
		t.Fatalf("after remove: chains %q remain", got)
	}
}
