package sidecar

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func do(t *testing.T, c *http.Client, method, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Admin bound to an address other hosts reach: a peer in another network
// namespace reads (GET) but every mutating endpoint answers 403; from
// loopback the same endpoints work. The Consul token appears in no admin
// response and no log line.
func TestAdminFromNonLoopbackPeer(t *testing.T) {
	pods := testenv.NewPods(t)
	pod := pods.Add("client")
	const token = "s3cr3t-acl-token-4f1d"
	logs := &syncBuffer{}
	lv := new(slog.LevelVar)
	lv.Set(slog.LevelDebug)
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: lv}))
	s, _ := startSidecarWith(t, fmt.Sprintf(`
admin: {address: "%s", pprof: true}
discovery: {consul: {address: 127.0.0.1:1, token: %s}}
`, net.JoinHostPort(pods.HostIP.String(), "0"), token), "", Options{Logger: log, Level: lv})
	remote := pod.HTTPClient(t)
	local := h1Client()
	base := "http://" + s.AdminAddr()
	var seen strings.Builder
	for _, path := range []string{"/", "/ready", "/clusters", "/config_dump", "/metrics", "/logging", "/debug/pprof/"} {
		code, body := do(t, remote, "GET", base+path)
		if code != 200 {
			t.Errorf("remote GET %s = %d %s", path, code, body)
		}
		seen.WriteString(body)
	}
	for _, path := range []string{"/quitquitquit", "/drain_listeners", "/undrain", "/reload", "/logging?level=debug"} {
		code, body := do(t, remote, "POST", base+path)
		if code != http.StatusForbidden || !strings.Contains(body, "loopback") {
			t.Errorf("remote POST %s = %d %q, want 403", path, code, body)
		}
		if code, _ := do(t, local, "GET", base+strings.Split(path, "?")[0]); path != "/logging?level=debug" && code != http.StatusMethodNotAllowed {
			t.Errorf("local GET %s = %d, want 405 (POST only)", path, code)
		}
	}
	select {
	case <-s.Quit():
		t.Fatal("a remote /quitquitquit stopped the sidecar")
	default:
	}
	// A loopback peer may (admin bound to HostIP is not reachable from
	// 127.0.0.1, so the rule is checked on the handler with a loopback peer).
	h := s.adminHandler()
	for _, path := range []string{"/drain_listeners", "/undrain"} {
		for _, peer := range []string{"127.0.0.1:5555", "[::1]:5555", "[::ffff:127.0.0.1]:5555"} {
			req := httptest.NewRequest("POST", path, nil)
			req.RemoteAddr = peer
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != 200 {
				t.Fatalf("loopback %s POST %s = %d", peer, path, rec.Code)
			}
		}
	}
	_, cd := do(t, remote, "GET", base+"/config_dump")
	var dump map[string]any
	if err := json.Unmarshal([]byte(cd), &dump); err != nil {
		t.Fatal(err)
	}
	got := dump["config"].(map[string]any)["discovery"].(map[string]any)["consul"].(map[string]any)["token"]
	if got != Redacted {
		t.Errorf("config_dump token = %v, want %q", got, Redacted)
	}
	if strings.Contains(seen.String()+cd, token) {
		t.Error("the token appears in an admin response")
	}
	if strings.Contains(logs.String(), token) {
		t.Errorf("the token appears in the log:\n%s", logs.String())
	}
}

// POST /drain_listeners turns /ready 503 and POST /undrain undoes it.
func TestAdminDrainUndrain(t *testing.T) {
	s, _ := startSidecar(t, "admin: 127.0.0.1:0\n", "services: {}\n")
	base := "http://" + s.AdminAddr()
	c := h1Client()
	if code, _ := do(t, c, "POST", base+"/drain_listeners"); code != 200 {
		t.Fatalf("drain_listeners %d", code)
	}
	if code, body := do(t, c, "GET", base+"/ready"); code != 503 || !strings.Contains(body, "draining") {
		t.Fatalf("/ready after drain_listeners: %d %q", code, body)
	}
	if code, _ := do(t, c, "POST", base+"/undrain"); code != 200 {
		t.Fatalf("undrain %d", code)
	}
	if code, body := do(t, c, "GET", base+"/ready"); code != 200 {
		t.Fatalf("/ready after undrain: %d %q", code, body)
	}
	code, body := do(t, c, "GET", base+"/")
	for _, want := range []string{"/ready", "/config_dump", "/undrain", "/logging", "/reload"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Fatalf("index lacks %s: %d\n%s", want, code, body)
		}
	}
	if strings.Contains(body, "/debug/pprof/") {
		t.Error("index lists pprof without admin.pprof")
	}
	if code, _ := do(t, c, "GET", base+"/debug/pprof/"); code == 200 {
		t.Error("pprof served without admin.pprof")
	}
	_, metrics := do(t, c, "GET", base+"/metrics")
	for _, want := range []string{"go_goroutines", "process_resident_memory_bytes", "sidemesh_"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// POST /logging?level=debug turns debug lines on at runtime, with the
// logger the caller built (run's) and with the sidecar's own gate.
func TestAdminRuntimeLogLevel(t *testing.T) {
	for _, own := range []bool{false, true} {
		t.Run(fmt.Sprintf("own_level=%v", own), func(t *testing.T) {
			logs := &syncBuffer{}
			opts := Options{}
			if own {
				opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			} else {
				opts.Level = new(slog.LevelVar)
				opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: opts.Level}))
			}
			s, _ := startSidecarWith(t, "admin: 127.0.0.1:0\nlog_level: info\n", "services: {}\n", opts)
			s.log.Debug("before-marker")
			base := "http://" + s.AdminAddr()
			c := h1Client()
			if code, body := do(t, c, "POST", base+"/logging?level=verbose"); code != 400 || !strings.Contains(body, "verbose") {
				t.Fatalf("bad level: %d %q", code, body)
			}
			if code, body := do(t, c, "POST", base+"/logging?level=debug"); code != 200 || !strings.Contains(body, "debug") {
				t.Fatalf("set debug: %d %q", code, body)
			}
			s.log.Debug("after-marker")
			if _, body := do(t, c, "GET", base+"/logging"); !strings.Contains(body, "debug") {
				t.Fatalf("GET /logging: %q", body)
			}
			out := logs.String()
			if strings.Contains(out, "before-marker") || !strings.Contains(out, "after-marker") {
				t.Fatalf("debug lines before/after POST /logging:\n%s", out)
			}
		})
	}
}

func TestAdminConfigForms(t *testing.T) {
	c, err := Parse("a.yaml", []byte("admin: {address: 127.0.0.1:15001, pprof: true}\n"))
	if err != nil || c.Admin.Address != "127.0.0.1:15001" || !c.Admin.Pprof {
		t.Fatalf("mapping form: %+v %v", c, err)
	}
	c, err = Parse("a.yaml", []byte("admin: 127.0.0.1:15002\n"))
	if err != nil || c.Admin.Address != "127.0.0.1:15002" || c.Admin.Pprof {
		t.Fatalf("string form: %+v %v", c, err)
	}
	_, err = Parse("a.yaml", []byte("node: x\nadmin: {address: 127.0.0.1:1, ppof: true}\n"))
	if err == nil || !strings.Contains(err.Error(), "admin.ppof") || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("unknown admin key: %v", err)
	}
}
