package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// SIGTERM drains as the README says: in-flight requests complete, the
// inbound answers Connection: close during its grace, a new outbound request
// 0.5 s into the drain is served (and more after the inbound closed), and
// the process exits 0 within quiet_period + 1 s after the last outbound
// request.
func TestDrainOnSIGTERM(t *testing.T) {
	release := make(chan struct{})
	api := startBackend(t, "api", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		fmt.Fprint(w, "ok")
	})
	app := startBackend(t, "app", nil)
	_, appPort, _ := net.SplitHostPort(app.Addr)
	ep := filepath.Join(t.TempDir(), "endpoints.yaml")
	if err := os.WriteFile(ep, []byte("services:\n  api:\n    - {address: "+api.Addr+", weight: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	inbound, listen := freeAddr(t), freeAddr(t)
	const quiet = time.Second
	s := startSidecar(t, "drain", fmt.Sprintf(`
service: {name: web, port: %s, inbound: %s}
discovery: {file: %s}
drain: {timeout: 30s, inbound_grace: 2s, quiet_period: 1s}
upstreams:
  - {service: api, listen: %s}
`, appPort, inbound, ep, listen), true)
	c := &http.Client{Timeout: 20 * time.Second}
	out := "http://" + listen
	slow := make(chan error, 1)
	go func() {
		resp, err := c.Get(out + "/slow")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != 200 {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
		}
		slow <- err
	}()
	testenv.Eventually(t, 10*time.Second, "slow request in flight", func() error {
		if api.Hits.Load() < 1 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	t0 := time.Now()
	if err := s.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "/ready 503", func() error {
		if code, _ := s.Get(t, "/ready"); code != 503 {
			return fmt.Errorf("/ready %d", code)
		}
		return nil
	})
	resp, err := c.Get("http://" + inbound + "/")
	if err != nil {
		t.Fatalf("inbound during its grace: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("inbound during its grace: %d, Connection: close %v", resp.StatusCode, resp.Close)
	}
	time.Sleep(time.Until(t0.Add(500 * time.Millisecond))) // the scenario: a call 0.5 s into the drain
	mustGet := func(what string) {
		resp, err := c.Get(out + "/")
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok" {
			t.Fatalf("%s: %d %q", what, resp.StatusCode, body)
		}
	}
	mustGet("outbound request 0.5 s into the drain")
	testenv.Eventually(t, 10*time.Second, "inbound closed after its grace", func() error {
		conn, err := net.DialTimeout("tcp", inbound, time.Second)
		if err == nil {
			conn.Close()
			return fmt.Errorf("still accepting")
		}
		return nil
	})
	close(release)
	if err := <-slow; err != nil {
		t.Fatalf("request in flight at SIGTERM: %v", err)
	}
	mustGet("outbound request after the inbound closed")
	last := time.Now()
	code, err := s.Wait(40 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
	if d := time.Since(last); d > quiet+time.Second {
		t.Fatalf("exited %v after the last outbound request; want within quiet_period %v + 1s", d, quiet)
	}
}

func reloadsMetric(t *testing.T, s *Sidecar, result string) int {
	t.Helper()
	_, body := s.Get(t, "/metrics")
	m := regexp.MustCompile(`sidemesh_config_reloads_total\{result="` + result + `"\} (\d+)`).FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// Ten reloads under load, half by SIGHUP and half by editing the watched
// file, add and remove an upstream and change a policy: no request fails.
// A broken file is rejected (still serving, the key logged); SIGUSR1
// reopens the access log.
func TestReloadUnderLoad(t *testing.T) {
	a := startBackend(t, "a", nil)
	b := startBackend(t, "b", nil)
	web := startBackend(t, "web", nil)
	dir := t.TempDir()
	ep := filepath.Join(dir, "endpoints.yaml")
	if err := os.WriteFile(ep, []byte(fmt.Sprintf("services:\n  api:\n    - {address: %s, weight: 1}\n    - {address: %s, weight: 1}\n  web:\n    - {address: %s, weight: 1}\n", a.Addr, b.Addr, web.Addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	admin, listen, webListen := freeAddr(t), freeAddr(t), freeAddr(t)
	accessLog := filepath.Join(dir, "access.log")
	cfgFor := func(policy string, withWeb bool) string {
		c := fmt.Sprintf("admin: %s\ndiscovery: {file: %s}\ndrain: {inbound_grace: 0s, quiet_period: 0s}\naccess_log: {path: %s}\nupstreams:\n  - {service: api, listen: %s, lb_policy: %s}\n",
			admin, ep, accessLog, listen, policy)
		if withWeb {
			c += fmt.Sprintf("  - {service: web, listen: %s}\n", webListen)
		}
		return c
	}
	s := startSidecar(t, "reload", cfgFor("round_robin", false), true)
	write := func(cfg string) {
		tmp := s.Config + ".tmp"
		if err := os.WriteFile(tmp, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, s.Config); err != nil { // as editors and ConfigMaps do
			t.Fatal(err)
		}
	}
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 10 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get("http://" + listen + "/")
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	policies := []string{"least_request", "weighted_random", "round_robin"}
	hups := 0
	for i := range 10 {
		withWeb := i%2 == 0
		before := reloadsMetric(t, s, "applied")
		served := ok.Load()
		write(cfgFor(policies[i%3], withWeb))
		if i%2 == 1 {
			if err := s.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			hups++
		}
		testenv.Eventually(t, 10*time.Second, fmt.Sprintf("reload %d applied", i), func() error {
			if reloadsMetric(t, s, "applied") <= before {
				return fmt.Errorf("not yet")
			}
			cl := s.Cluster(t, "api")
			if cl.LBPolicy != policies[i%3] {
				return fmt.Errorf("lb_policy %s", cl.LBPolicy)
			}
			return nil
		})
		testenv.Eventually(t, 10*time.Second, "web listener follows the config", func() error {
			resp, err := http.Get("http://" + webListen + "/")
			if err == nil {
				resp.Body.Close()
			}
			if (err == nil) != withWeb {
				return fmt.Errorf("web reachable %v, want %v", err == nil, withWeb)
			}
			return nil
		})
		testenv.Eventually(t, 10*time.Second, "traffic after the reload", func() error {
			if ok.Load() < served+20 {
				return fmt.Errorf("not yet")
			}
			return nil
		})
	}
	close(stop)
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d requests failed across 10 reloads; first: %v", f, f+ok.Load(), firstErr.Load())
	}
	if n := strings.Count(s.Log(), "SIGHUP received; reloading"); n != hups {
		t.Fatalf("%d SIGHUP reloads logged, want %d", n, hups)
	}
	// A broken file: rejected, still serving, the key logged.
	write(strings.Replace(cfgFor("round_robin", false), "lb_policy:", "lb_polcy:", 1))
	testenv.Eventually(t, 10*time.Second, "broken file rejected", func() error {
		if reloadsMetric(t, s, "rejected") < 1 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if !strings.Contains(s.Log(), "upstreams[0].lb_polcy: unknown key (line 6)") {
		t.Fatalf("the rejection does not name the key and line:\n%s", s.Log())
	}
	if _, failed := load(t, "http://"+listen+"/", 50, 4); failed > 0 {
		t.Fatalf("%d requests failed after the rejected reload", failed)
	}
	// SIGUSR1 after logrotate moved the file: lines go to a new one.
	if err := os.Rename(accessLog, accessLog+".1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "access log reopened", func() error {
		if _, failed := load(t, "http://"+listen+"/", 1, 1); failed > 0 {
			return fmt.Errorf("request failed")
		}
		data, err := os.ReadFile(accessLog)
		if err != nil || !strings.Contains(string(data), `"upstream":"api"`) {
			return fmt.Errorf("no line in the new file yet (%v)", err)
		}
		return nil
	})
	if code := s.Terminate(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
