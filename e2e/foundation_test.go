package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// A bad config stops `sidemesh run` with exit 1 and an error naming the key,
// before anything is bound.
func TestRunRejectsBadConfig(t *testing.T) {
	admin := freeAddr(t)
	listen := freeAddr(t)
	cases := map[string]string{
		"admin: " + admin + "\ndiscovery: {file: ep.yaml}\nupstreams:\n  - {service: api, listen: " + listen + ", lb_polcy: maglev}\n": "upstreams[0].lb_polcy: unknown key (line 4)",
		"admin: " + admin + "\ndiscovery: {file: ep.yaml}\nupstreams:\n  - {service: api, listen: " + listen + ", timeout: -1s}\n":     `upstreams[0].timeout: "-1s" must be >= 0`,
	}
	for cfg, want := range cases {
		path := filepath.Join(t.TempDir(), "bad.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(sidemeshBin(t), "run", "-c", path)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
			t.Fatalf("exit: %v (%s)", err, out)
		}
		if !strings.Contains(string(out), want) {
			t.Fatalf("output %q does not contain %q", out, want)
		}
		if strings.Contains(string(out), "sidecar started") {
			t.Fatalf("bound listeners before rejecting the config: %s", out)
		}
	}
}

// A sidecar with a file of endpoints, driven as a user would: requests
// balanced by weight, admin endpoints, graceful drain on SIGTERM.
func TestRunWithEndpointsFile(t *testing.T) {
	release := make(chan struct{})
	a := startBackend(t, "a", nil)
	b := startBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		fmt.Fprint(w, "hello from b")
	})
	app := startBackend(t, "app", nil)
	ep := filepath.Join(t.TempDir(), "endpoints.yaml")
	if err := os.WriteFile(ep, []byte(fmt.Sprintf("services:\n  api:\n    - {address: %s, weight: 1}\n    - {address: %s, weight: 3}\n", a.Addr, b.Addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	listen, inbound := freeAddr(t), freeAddr(t)
	_, appPort, _ := net.SplitHostPort(app.Addr)
	s := startSidecar(t, "web", fmt.Sprintf(`node: web-1
service: {name: web, port: %s, inbound: %s}
discovery: {file: %s}
drain: {timeout: 5s}
upstreams:
  - {service: api, listen: %s}
`, appPort, inbound, ep, listen), true)
	counts, failed := load(t, "http://"+listen+"/", 400, 4)
	if failed != 0 || counts["a"] != 100 || counts["b"] != 300 {
		t.Fatalf("split %v, %d failed; want a=100 b=300 (round_robin is exact)", counts, failed)
	}
	if code, body := s.Get(t, "/metrics"); code != 200 || !strings.Contains(body, "sidemesh_upstream_rq_total") {
		t.Fatalf("/metrics: %d", code)
	}
	// Inbound reaches the app.
	resp, err := http.Get("http://" + inbound + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello from app" {
		t.Fatalf("inbound: %q", body)
	}

	// Drain: a request in flight when SIGTERM arrives completes; /ready
	// turns 503 and inbound closes at once; the process exits 0.
	slowDone := make(chan string, 1)
	go func() {
		c := &http.Client{Timeout: 20 * time.Second}
		for i := 0; ; i++ { // round robin: find b
			resp, err := c.Get("http://" + listen + "/slow")
			if err != nil {
				slowDone <- err.Error()
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) == "hello from b" {
				slowDone <- string(body)
				return
			}
		}
	}()
	testenv.Eventually(t, 10*time.Second, "slow request in flight", func() error {
		if b.Hits.Load() <= 300 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if err := s.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "/ready 503 while draining", func() error {
		resp, err := http.Get("http://" + s.Admin + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 503 {
			return fmt.Errorf("/ready = %d", resp.StatusCode)
		}
		return nil
	})
	testenv.Eventually(t, 10*time.Second, "inbound closed", func() error {
		c, err := net.DialTimeout("tcp", inbound, time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("inbound still accepting")
		}
		return nil
	})
	close(release)
	if got := <-slowDone; got != "hello from b" {
		t.Fatalf("in-flight request during drain: %s", got)
	}
	code, err := s.Wait(30 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
}

func TestDemoPrintsTable(t *testing.T) {
	out, err := exec.Command(sidemeshBin(t), "demo", "--requests", "1000").CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	re := regexp.MustCompile(`backend-\d \(127\.0\.0\.1:\d+\)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+(\d+)`)
	rows := re.FindAllStringSubmatch(string(out), -1)
	if len(rows) != 3 {
		t.Fatalf("demo table:\n%s", out)
	}
	for _, r := range rows {
		if r[2] != r[3] { // round robin: observed equals expected at 1000 requests
			t.Errorf("weight %s: expected %s observed %s", r[1], r[2], r[3])
		}
	}
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(sidemeshBin(t), "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "sidemesh ") {
		t.Fatalf("version: %v %q", err, out)
	}
}
