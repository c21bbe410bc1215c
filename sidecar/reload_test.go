package sidecar

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// reloadSidecar starts a sidecar from a config file it can reload; the
// file's {{EP}} is the endpoints file.
func reloadSidecar(t *testing.T, cfgYAML, endpoints string, logs io.Writer) (s *Sidecar, write func(string)) {
	t.Helper()
	dir := t.TempDir()
	ep := filepath.Join(dir, "endpoints.yaml")
	writeFile(t, ep, endpoints)
	path := filepath.Join(dir, "sidecar.yaml")
	write = func(y string) { writeFile(t, path, strings.ReplaceAll(y, "{{EP}}", ep)) }
	write(cfgYAML)
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var zero time.Duration
	cfg.Drain.InboundGrace, cfg.Drain.QuietPeriod = &zero, &zero
	if logs == nil {
		logs = io.Discard
	}
	return runSidecar(t, cfg, Options{ConfigFile: path, Logger: slog.New(slog.NewTextHandler(logs, nil))}), write
}

func reloadsCount(s *Sidecar, result string) float64 {
	return testutil.ToFloat64(s.reloads.WithLabelValues(result))
}

// Ten reloads under load, half by a file edit (the watcher) and half by
// ReloadFile (SIGHUP, POST /reload): an upstream added and removed, a
// policy changed. No request fails.
func TestReloadUnderLoadFailsNothing(t *testing.T) {
	a := startBackend(t, "a", nil)
	b := startBackend(t, "b", nil)
	web := startBackend(t, "web", nil)
	eps := endpointsYAML("api", a.addr, 1, b.addr, 1) + fmt.Sprintf("  web:\n    - {address: %s, weight: 1}\n", web.addr)
	base := `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - {service: api, listen: 127.0.0.1:0, lb_policy: %s, timeout: %s}
%s`
	s, write := reloadSidecar(t, fmt.Sprintf(base, "round_robin", "10s", ""), eps, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.WatchConfigFile(ctx, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	apiURL := "http://" + s.UpstreamAddr("api") + "/"
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := h1Client()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get(apiURL)
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
	for i := range 10 {
		webUp := ""
		if i%2 == 0 {
			webUp = "  - {service: web, listen: 127.0.0.1:0}\n"
		}
		next := fmt.Sprintf(base, policies[i%3], fmt.Sprintf("%ds", 10+i), webUp)
		before := reloadsCount(s, "applied")
		served := ok.Load()
		write(next)
		if i%2 == 1 {
			if err := s.ReloadFile(); err != nil {
				t.Fatalf("reload %d: %v", i, err)
			}
		}
		// The watcher may also apply an earlier write late (the same file
		// read again): wait for this reload's content, not only a count.
		eventually(t, 10*time.Second, fmt.Sprintf("reload %d applied", i), func() bool {
			return reloadsCount(s, "applied") > before && s.Cluster("api").policyName() == policies[i%3] &&
				(s.UpstreamAddr("web") != "") == (webUp != "")
		})
		if got := s.Cluster("api").policyName(); got != policies[i%3] {
			t.Fatalf("reload %d: lb_policy %s, want %s", i, got, policies[i%3])
		}
		if addr := s.UpstreamAddr("web"); (addr != "") != (webUp != "") {
			t.Fatalf("reload %d: web listener %q, want present=%v", i, addr, webUp != "")
		} else if addr != "" {
			if resp, body := get(t, h1Client(), "http://"+addr+"/"); resp.StatusCode != 200 || body != "hello from web" {
				t.Fatalf("reload %d: web: %d %q", i, resp.StatusCode, body)
			}
		}
		eventually(t, 10*time.Second, "traffic flows after the reload", func() bool { return ok.Load() > served+20 })
	}
	close(stop)
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d requests failed across 10 reloads; first: %v", f, f+ok.Load(), firstErr.Load())
	}
	if r := reloadsCount(s, "rejected"); r != 0 {
		t.Fatalf("%v reloads rejected", r)
	}
}

// An endpoint ejected by outlier detection stays ejected across a reload
// that leaves outlier_detection alone (and changes other settings).
func TestReloadKeepsEjection(t *testing.T) {
	good := startBackend(t, "good", nil)
	bad := startBackend(t, "bad", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) })
	cfg := `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    timeout: %s
    outlier_detection: {consecutive_5xx: 2, base_ejection_time: 10m, max_ejection_percent: 50}
`
	s, write := reloadSidecar(t, fmt.Sprintf(cfg, "15s"), endpointsYAML("api", good.addr, 1, bad.addr, 1), nil)
	c := h1Client()
	ejected := func() bool {
		for _, e := range s.Cluster("api").Status().Endpoints {
			if e.Address == bad.addr {
				return e.Health == "ejected"
			}
		}
		return false
	}
	eventually(t, 10*time.Second, "bad endpoint ejected", func() bool {
		resp, _ := get(t, c, "http://"+s.UpstreamAddr("api")+"/")
		_ = resp
		return ejected()
	})
	cl := s.Cluster("api")
	write(fmt.Sprintf(cfg, "20s"))
	if err := s.ReloadFile(); err != nil {
		t.Fatal(err)
	}
	if s.Cluster("api") != cl {
		t.Fatal("the reload replaced the cluster")
	}
	if to := *s.Cluster("api").upstream().Timeout; to != 20*time.Second {
		t.Fatalf("timeout after reload %v", to)
	}
	if !ejected() {
		t.Fatal("the reload forgot the ejection")
	}
	for range 20 {
		if resp, body := get(t, c, "http://"+s.UpstreamAddr("api")+"/"); resp.StatusCode != 200 || body != "hello from good" {
			t.Fatalf("after reload: %d %q (ejected endpoint served?)", resp.StatusCode, body)
		}
	}
}

// A broken file on reload is rejected whole: the sidecar serves on with
// the running config, the error (file, key, line) is returned and logged,
// and the rejection is counted. A change of a restart-only key is refused.
func TestReloadRejectsBrokenFile(t *testing.T) {
	a := startBackend(t, "a", nil)
	logs := &syncBuffer{}
	good := `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - {service: api, listen: 127.0.0.1:0}
`
	s, write := reloadSidecar(t, good, endpointsYAML("api", a.addr, 1), logs)
	addr := s.UpstreamAddr("api")
	write(`
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - {service: api, listen: 127.0.0.1:0, lb_polcy: random}
`)
	err := s.ReloadFile()
	if err == nil || !strings.Contains(err.Error(), "sidecar.yaml: config: upstreams[0].lb_polcy: unknown key (line 5)") {
		t.Fatalf("reload of a broken file: %v", err)
	}
	if !strings.Contains(logs.String(), "upstreams[0].lb_polcy") {
		t.Fatalf("the rejection is not logged with the key:\n%s", logs.String())
	}
	if reloadsCount(s, "rejected") != 1 || reloadsCount(s, "applied") != 0 {
		t.Fatalf("reloads: rejected %v applied %v", reloadsCount(s, "rejected"), reloadsCount(s, "applied"))
	}
	if resp, body := get(t, h1Client(), "http://"+addr+"/"); resp.StatusCode != 200 || body != "hello from a" {
		t.Fatalf("after a rejected reload: %d %q", resp.StatusCode, body)
	}
	write(strings.Replace(good, "admin: 127.0.0.1:0", "admin: 127.0.0.1:1", 1))
	if err := s.ReloadFile(); err == nil || !strings.Contains(err.Error(), "admin: changed; it takes effect only at a restart") {
		t.Fatalf("admin change: %v", err)
	}
	// POST /reload answers with the rejection.
	code, body := do(t, h1Client(), "POST", "http://"+s.AdminAddr()+"/reload")
	if code != http.StatusBadRequest || !strings.Contains(body, "admin: changed") {
		t.Fatalf("POST /reload: %d %q", code, body)
	}
	write(good)
	if code, body := do(t, h1Client(), "POST", "http://"+s.AdminAddr()+"/reload"); code != 200 {
		t.Fatalf("POST /reload of the good file: %d %q", code, body)
	}
}
