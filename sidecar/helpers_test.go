package sidecar

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// backend is a real HTTP server on 127.0.0.1 that names itself.
type backend struct {
	name    string
	addr    string
	srv     *http.Server
	hits    atomic.Int64
	mu      sync.Mutex
	last    *http.Request
	handler http.HandlerFunc
}

func startBackend(t testing.TB, name string, h http.HandlerFunc) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, addr: ln.Addr().String(), handler: h}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	b.srv = &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		b.mu.Lock()
		b.last = r.Clone(context.Background())
		b.mu.Unlock()
		w.Header().Set("X-Backend", name)
		if b.handler != nil {
			b.handler(w, r)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "hello from %s", name)
	})}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

func (b *backend) lastRequest() *http.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

func writeFile(t testing.TB, path, s string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// endpointsYAML renders an endpoints file for one service.
func endpointsYAML(service string, eps ...any) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "services:\n  %s:\n", service)
	for i := 0; i+1 < len(eps); i += 2 {
		fmt.Fprintf(&sb, "    - {address: %s, weight: %d}\n", eps[i], eps[i+1])
	}
	return sb.String()
}

// startSidecar runs a sidecar from YAML with {{EP}} replaced by the
// endpoints file path; listeners should use port 0.
func startSidecar(t testing.TB, cfgYAML, endpoints string) (*Sidecar, string) {
	t.Helper()
	return startSidecarWith(t, cfgYAML, endpoints, Options{})
}

// startSidecarWith is startSidecar with options.
func startSidecarWith(t testing.TB, cfgYAML, endpoints string, opts Options) (*Sidecar, string) {
	t.Helper()
	dir := t.TempDir()
	ep := filepath.Join(dir, "endpoints.yaml")
	writeFile(t, ep, endpoints)
	cfgYAML = strings.ReplaceAll(cfgYAML, "{{EP}}", ep)
	cfg, err := Parse("test.yaml", []byte(cfgYAML))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cfgYAML, "drain:") {
		var zero time.Duration // tests that are not about the drain stop at once
		cfg.Drain.InboundGrace, cfg.Drain.QuietPeriod = &zero, &zero
	}
	return runSidecar(t, cfg, opts), ep
}

// runSidecar builds, starts and waits for a sidecar, shut down when the
// test ends.
func runSidecar(t testing.TB, cfg *Config, opts Options) *Sidecar {
	t.Helper()
	s, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not reached within %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

func get(t testing.TB, c *http.Client, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: 10 * time.Second}
}

func h1Client() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
}
