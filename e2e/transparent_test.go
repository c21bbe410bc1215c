package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// The transparent listener with real iptables capture, in a network
// namespace the test creates: the "app" (this test, uid 0) dials endpoint
// addresses directly; `sidemesh iptables install` redirects its outbound TCP
// to the sidecar (running as uid 1337, whose own traffic is not captured),
// which routes by Host header or by original destination.
func TestTransparentCaptureWithIptables(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.RequireOrSkip(t, "needs root to create a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.RequireOrSkip(t, "ip (iproute2) is not installed")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		testenv.RequireOrSkip(t, "iptables is not installed (`make test` installs it with apt-get when it can)")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		testenv.RequireOrSkip(t, "setpriv (util-linux) is not installed")
	}
	ns := fmt.Sprintf("sidemesh-e2e-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		testenv.RequireOrSkip(t, fmt.Sprintf("this machine does not allow network namespaces (ip netns add: %v: %s)", err, bytes.TrimSpace(out)))
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	nsRun := func(args ...string) { mustRun(t, append([]string{"ip", "netns", "exec", ns}, args...)...) }
	nsRun("ip", "link", "set", "lo", "up")
	// Endpoint addresses of the namespace's own (no dummy/veth module needed).
	for _, a := range []string{"198.18.77.1/32", "198.18.77.2/32", "198.18.77.3/32"} {
		nsRun("ip", "addr", "add", a, "dev", "lo")
	}

	// Backends inside the namespace.
	for _, b := range []struct{ name, addr string }{{"api-1", "198.18.77.1:8080"}, {"api-2", "198.18.77.2:8080"}, {"web", "198.18.77.3:8080"}} {
		ln := nsListen(t, ns, b.addr)
		name := b.name
		var protos http.Protocols // HTTP/1.1 and h2c with prior knowledge
		protos.SetHTTP1(true)
		protos.SetUnencryptedHTTP2(true)
		srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) })}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	echoLn := nsListen(t, ns, "198.18.77.3:9000")
	t.Cleanup(func() { echoLn.Close() })
	go func() {
		for {
			c, err := echoLn.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()

	// The sidecar, as uid 1337, with a world-readable config.
	dir := t.TempDir()
	_ = os.Chmod(dir, 0o755)
	_ = os.Chmod(filepath.Dir(dir), 0o755)
	ep := filepath.Join(dir, "endpoints.yaml")
	writeWorldReadable(t, ep, `services:
  api:
    - {address: 198.18.77.1:8080, weight: 1}
    - {address: 198.18.77.2:8080, weight: 1}
  web:
    - {address: 198.18.77.3:8080, weight: 1}
  echo:
    - {address: 198.18.77.3:9000, weight: 1}
`)
	cfg := filepath.Join(dir, "sidemesh.yaml")
	writeWorldReadable(t, cfg, fmt.Sprintf(`node: capture-1
admin: 127.0.0.1:15000
discovery: {file: %s}
transparent: {listen: 127.0.0.1:15001}
upstreams:
  - {service: api}
  - {service: web}
  - {service: echo, protocol: tcp}
`, ep))
	bin := sidemeshBin(t)
	_ = os.Chmod(bin, 0o755)
	_ = os.Chmod(filepath.Dir(bin), 0o755)
	testenv.StartProcess(t, "sidemesh-capture", "ip", "netns", "exec", ns,
		"setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", bin, "run", "-c", cfg)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return nsDial(ns, addr)
		},
	}}
	testenv.Eventually(t, 30*time.Second, "sidecar ready in the namespace", func() error {
		resp, err := client.Get("http://127.0.0.1:15000/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("/ready %d", resp.StatusCode)
		}
		return nil
	})
	getHost := func(url, host string) string {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s (Host %s): %v", url, host, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, b)
	}
	// Before capture: straight to the backend.
	if got := getHost("http://198.18.77.1:8080/", "web"); got != "200 api-1" {
		t.Fatalf("before capture: %q", got)
	}

	nsRun(bin, "iptables", "install", "--proxy-port", "15001", "--proxy-uid", "1337")

	// Host routes: the request dialled api-1 but names web.
	if got := getHost("http://198.18.77.1:8080/", "web"); got != "200 web" {
		t.Fatalf("captured request with Host web: %q", got)
	}
	// Original destination routes: balanced across the api endpoints.
	seen := map[string]int{}
	for i := 0; i < 20; i++ {
		seen[getHost("http://198.18.77.1:8080/", "198.18.77.1:8080")]++
	}
	if seen["200 api-1"] == 0 || seen["200 api-2"] == 0 || len(seen) != 2 {
		t.Fatalf("original-destination routing should balance across api: %v", seen)
	}
	// Unknown Host and unknown destination.
	if got := getHost("http://198.18.77.1:8080/", "nope"); !strings.HasPrefix(got, "404 ") {
		t.Fatalf("unknown upstream: %q", got)
	}
	// h2c with prior knowledge, captured: one client connection whose
	// streams each route by :authority (by name, or by the original
	// destination for an address, balanced stream by stream).
	var h2p http.Protocols
	h2p.SetUnencryptedHTTP2(true)
	var dials atomic.Int32
	h2c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &h2p,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return nsDial(ns, addr)
		}}}
	h2Host := func(host string) string {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://198.18.77.1:8080/", nil)
		req.Host = host
		resp, err := h2c.Do(req)
		if err != nil {
			t.Fatalf("h2c GET (authority %s): %v", host, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.ProtoMajor != 2 {
			t.Fatalf("h2c GET (authority %s): answered over HTTP/%d", host, resp.ProtoMajor)
		}
		return fmt.Sprintf("%d %s", resp.StatusCode, b)
	}
	if got := h2Host("web"); got != "200 web" {
		t.Fatalf("captured h2c stream with authority web: %q", got)
	}
	seen = map[string]int{}
	for i := 0; i < 20; i++ {
		seen[h2Host("198.18.77.1:8080")]++
	}
	if seen["200 api-1"] == 0 || seen["200 api-2"] == 0 || len(seen) != 2 {
		t.Fatalf("h2c streams by original destination should balance across api: %v", seen)
	}
	if got := h2Host("nope"); !strings.HasPrefix(got, "404 ") {
		t.Fatalf("h2c stream to an unknown upstream: %q", got)
	}
	if got := h2Host("api"); got != "200 api-1" && got != "200 api-2" {
		t.Fatalf("h2c stream after the 404: %q", got)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("the h2c client dialed %d connections, want 1 (streams multiplexed)", n)
	}

	// TCP by original destination.
	c, err := nsDial(ns, "198.18.77.3:9000")
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write([]byte("\x00binary ping"))
	buf := make([]byte, 12)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "\x00binary ping" {
		t.Fatalf("tcp echo through capture: %q %v", buf, err)
	}
	c.Close()
	resp, err := client.Get("http://127.0.0.1:15000/clusters")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"rq_total": 1`) || !strings.Contains(string(body), `"name": "echo"`) {
		t.Fatalf("/clusters after the TCP echo: %s", body)
	}
	// A destination nobody owns: accepted by the capture, then closed.
	c, err = nsDial(ns, "198.18.77.2:7777")
	if err != nil {
		t.Fatalf("captured connection to an unknown destination should be accepted then closed: %v", err)
	}
	_, _ = c.Write([]byte("\x00x"))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF || n != 0 {
		t.Fatalf("unknown destination: read %d, %v; want close", n, err)
	}
	c.Close()

	nsRun(bin, "iptables", "remove")
	if got := getHost("http://198.18.77.1:8080/", "web"); got != "200 api-1" {
		t.Fatalf("after remove: %q", got)
	}
}

func mustRun(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func writeWorldReadable(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// inNetns runs f on an OS thread moved into the named network namespace;
// sockets created there stay in it.
func inNetns(ns string, f func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return err // leave the thread locked: it dies with the goroutine
	}
	runtime.UnlockOSThread()
	return ferr
}

func nsListen(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := inNetns(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		t.Fatal(err)
	}
	return ln
}

func nsDial(ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr, 10*time.Second); return })
	return c, err
}
