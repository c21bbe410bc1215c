package sidecar

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

type accessLine struct {
	Start     string   `json:"start_time"`
	Duration  float64  `json:"duration_ms"`
	Method    string   `json:"method"`
	Authority string   `json:"authority"`
	Path      string   `json:"path"`
	Protocol  string   `json:"protocol"`
	Status    int      `json:"status"`
	Flags     []string `json:"response_flags"`
	Attempts  int      `json:"attempts"`
	Upstream  string   `json:"upstream"`
	Endpoint  string   `json:"endpoint"`
	Rx        int64    `json:"bytes_received"`
	Tx        int64    `json:"bytes_sent"`
	RequestID string   `json:"request_id"`
	TraceID   string   `json:"trace_id"`
}

func readAccessLog(t *testing.T, path string) []accessLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []accessLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l accessLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("unparseable access log line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

// Every request of a 2000-request run has exactly one parseable line with
// its status and response flags; a TCP connection has its line too.
func TestAccessLogOneLinePerRequest(t *testing.T) {
	api := startBackend(t, "api", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/teapot" {
			w.WriteHeader(418)
		}
		fmt.Fprint(w, "hello")
	})
	echo, _ := startEcho(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	s := startSidecarNoCleanup(t, fmt.Sprintf(`
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
drain: {timeout: 5s, inbound_grace: 0s, quiet_period: 0s}
access_log: {path: %s}
upstreams:
  - {service: api, listen: 127.0.0.1:0}
  - {service: none, listen: 127.0.0.1:0}
  - {service: echo, listen: 127.0.0.1:0, protocol: tcp}
`, logPath), endpointsYAML("api", api.addr, 1)+fmt.Sprintf("  echo:\n    - {address: %s, weight: 1}\n", echo))
	const n = 2000
	type want struct {
		status int
		flags  string
		up     string
	}
	wants := make([]want, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 8)
	c := h1Client()
	for i := range n {
		up, path, w := "api", "/", want{200, "", "api"}
		switch {
		case i%10 == 0:
			up, w = "none", want{503, "no_healthy_upstream", "none"}
		case i%7 == 0:
			path, w = "/teapot", want{418, "", "api"}
		}
		wants[i] = w
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req, _ := http.NewRequest("POST", "http://"+s.UpstreamAddr(up)+path, strings.NewReader("0123456789"))
			req.Header.Set("X-Request-Id", fmt.Sprintf("req-%d", i))
			resp, err := c.Do(req)
			if err != nil {
				errs <- err
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != w.status {
				errs <- fmt.Errorf("req-%d: status %d, want %d", i, resp.StatusCode, w.status)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", s.UpstreamAddr("echo"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	shutdownWithin(t, s, 20*time.Second) // flushes the log
	lines := readAccessLog(t, logPath)
	seen := map[string]int{}
	tcp := 0
	for _, l := range lines {
		if l.Protocol == "tcp" {
			tcp++
			if l.Upstream != "echo" || l.Endpoint != echo || l.Rx != 4 || l.Tx != 4 {
				t.Errorf("tcp line: %+v", l)
			}
			continue
		}
		var i int
		if _, err := fmt.Sscanf(l.RequestID, "req-%d", &i); err != nil || i < 0 || i >= n {
			t.Fatalf("line with request id %q", l.RequestID)
		}
		seen[l.RequestID]++
		w := wants[i]
		if l.Status != w.status || strings.Join(l.Flags, ",") != w.flags || l.Upstream != w.up || l.Method != "POST" {
			t.Errorf("req-%d: line %+v, want %+v", i, l, w)
		}
		if w.up == "api" && (l.Endpoint != api.addr || l.Attempts != 1 || l.Rx != 10 || l.Tx != 5 || l.Protocol != "HTTP/1.1") {
			t.Errorf("req-%d: line %+v", i, l)
		}
		if _, err := time.Parse(time.RFC3339Nano, l.Start); err != nil {
			t.Errorf("req-%d: start_time %q", i, l.Start)
		}
	}
	for i := range n {
		if k := seen[fmt.Sprintf("req-%d", i)]; k != 1 {
			t.Errorf("req-%d has %d lines", i, k)
		}
	}
	if tcp != 1 {
		t.Errorf("%d TCP lines, want 1", tcp)
	}
}

// blockingWriter stalls every write until released.
type blockingWriter struct{ release chan struct{} }

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	return len(p), nil
}

// A stalled log writer does not hold requests: they all complete, and the
// lines that did not fit are dropped and counted.
func TestAccessLogStalledWriterDrops(t *testing.T) {
	api := startBackend(t, "api", nil)
	w := &blockingWriter{release: make(chan struct{})}
	s, _ := startSidecarWith(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
access_log: {path: stdout, format: text}
upstreams:
  - {service: api, listen: 127.0.0.1:0}
`, endpointsYAML("api", api.addr, 1), Options{Stdout: w})
	t.Cleanup(func() { close(w.release) }) // before the Shutdown cleanup
	const n = 6000
	c := h1Client()
	var wg sync.WaitGroup
	per := n / 8
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				resp, err := c.Get("http://" + s.UpstreamAddr("api") + "/")
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	// At most the buffer, the writer's 64 KiB and one line in its hands
	// are held; the rest is dropped.
	dropped := testutil.ToFloat64(s.alogDropped)
	if dropped < n-accessLogBuffer-(64<<10)/100-1 {
		t.Fatalf("dropped %v of %d lines with the writer stalled", dropped, n)
	}
}

func TestAccessLogTextAndReopen(t *testing.T) {
	api := startBackend(t, "api", nil)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "access.log")
	s, _ := startSidecar(t, fmt.Sprintf(`
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
access_log: {path: %s, format: text}
upstreams:
  - {service: api, listen: 127.0.0.1:0}
`, logPath), endpointsYAML("api", api.addr, 1))
	get(t, h1Client(), "http://"+s.UpstreamAddr("api")+"/a", "X-Request-Id", "one")
	eventually(t, 5*time.Second, "first line written", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "request_id=one")
	})
	if err := os.Rename(logPath, logPath+".1"); err != nil { // logrotate
		t.Fatal(err)
	}
	s.ReopenLogs()
	get(t, h1Client(), "http://"+s.UpstreamAddr("api")+"/b", "X-Request-Id", "two")
	eventually(t, 5*time.Second, "line in the reopened file", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "request_id=two")
	})
	b, _ := os.ReadFile(logPath)
	line := strings.TrimSpace(string(b))
	for _, want := range []string{"method=GET", `path="/b"`, "status=200", "flags=-", "attempts=1", "upstream=api", "endpoint=" + api.addr, "protocol=HTTP/1.1"} {
		if !strings.Contains(line, want) {
			t.Errorf("text line lacks %s: %s", want, line)
		}
	}
}

func TestAccessLogConfigErrors(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"access_log: {path: /nonexistent-dir/x/access.log}\n", "access_log.path"},
		{"access_log: {path: stdout, format: xml}\n", "access_log.format"},
		{"access_log: {format: json}\n", "access_log.path"},
	} {
		if _, err := Parse("a.yaml", []byte(tc.doc)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want one naming %s", tc.doc, err, tc.want)
		}
	}
}

// BenchmarkAccessLog is the proxy path with the access log off and on (to
// a file); cpu-ns/op is the process's CPU time (user+system) per request.
func BenchmarkAccessLog(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			be := benchBackend(b)
			cfg := oneUpstream
			if on {
				cfg += fmt.Sprintf("access_log: {path: %s}\n", filepath.Join(b.TempDir(), "access.log"))
			}
			s, _ := startSidecar(b, cfg, endpointsYAML("api", be.addr, 1))
			before := cpuTime(b)
			runLoad(b, "http://"+s.UpstreamAddr("api")+"/")
			b.ReportMetric(float64(cpuTime(b)-before)/float64(b.N), "cpu-ns/op")
		})
	}
}

// The inbound listener logs too (its attempts carry no client span).
func TestAccessLogInbound(t *testing.T) {
	app := startBackend(t, "app", nil)
	_, port, _ := strings.Cut(app.addr, ":")
	logPath := filepath.Join(t.TempDir(), "access.log")
	s, _ := startSidecar(t, fmt.Sprintf(`
admin: 127.0.0.1:0
access_log: {path: %s}
service: {name: web, port: %s, inbound: 127.0.0.1:0}
`, logPath, port), "services: {}\n")
	c := h1Client()
	for range 3 {
		if resp, body := get(t, c, "http://"+s.InboundAddr()+"/in"); resp.StatusCode != 200 || body != "hello from app" {
			t.Fatalf("inbound: %d %q", resp.StatusCode, body)
		}
	}
	eventually(t, 10*time.Second, "three inbound lines", func() bool {
		data, _ := os.ReadFile(logPath)
		return strings.Count(string(data), `"path":"/in"`) == 3 && strings.Count(string(data), `"status":200`) == 3
	})
}
