package consul

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/internal/testenv"

	"golang.org/x/sys/unix"
)

var nsSeq int

// inNetns runs fn on a thread inside a fresh network namespace set up by the
// given `ip` commands (each run as `ip -n NS ARGS...`). The thread is never
// returned to the runtime's pool: it exits with its goroutine.
func inNetns(t *testing.T, setup [][]string, fn func()) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root to create a network namespace"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs the ip command (iproute2)"
	}
	if why != "" {
		testenv.RequireOrSkip(t, "this test "+why)
	}
	nsSeq++
	ns := fmt.Sprintf("smaddr-%d-%d", os.Getpid(), nsSeq)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		testenv.RequireOrSkip(t, fmt.Sprintf("ip netns add refused: %v: %s", err, out))
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	for _, args := range append([][]string{{"link", "set", "lo", "up"}}, setup...) {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip -n %s %v: %v: %s", ns, args, err, out)
		}
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		fn()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestDetectAddress(t *testing.T) {
	dummy := func(cidr string) [][]string {
		return [][]string{
			{"link", "add", "d0", "type", "veth", "peer", "name", "d1"},
			{"addr", "add", cidr, "dev", "d0", "nodad"},
			{"link", "set", "d0", "up"},
			{"link", "set", "d1", "up"},
		}
	}
	cases := []struct {
		name  string
		setup [][]string
		agent string
		want  string // "" means ErrNoAddress
	}{
		{"route to the agent", dummy("198.18.7.2/24"), "198.18.7.9:8500", "198.18.7.2"},
		{"agent with scheme", dummy("198.18.7.2/24"), "http://198.18.7.9:8500", "198.18.7.2"},
		{"agent on loopback: first interface address", dummy("198.18.7.2/24"), "127.0.0.1:8500", "198.18.7.2"},
		{"IPv6 route", dummy("2001:2::2/64"), "[2001:2::9]:8500", "2001:2::2"},
		{"only loopback, agent on loopback", nil, "127.0.0.1:8500", "127.0.0.1"},
		{"only loopback, agent elsewhere: undetectable", nil, "198.18.7.9:8500", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got netip.Addr
			var err error
			inNetns(t, tc.setup, func() { got, err = DetectAddress(tc.agent) })
			if tc.want == "" {
				if !errors.Is(err, ErrNoAddress) {
					t.Fatalf("DetectAddress(%s) = %v, %v; want ErrNoAddress", tc.agent, got, err)
				}
				if !strings.Contains(err.Error(), "198.18.7.9:8500") {
					t.Errorf("error %q does not name the agent", err)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Fatalf("DetectAddress(%s) = %v, %v; want %s", tc.agent, got, err, tc.want)
			}
		})
	}
}
