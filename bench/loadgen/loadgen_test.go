package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/bench/internal/measure"
	"github.com/sidemesh/sidemesh/internal/testenv"
)

func TestConnDo(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			w.Write([]byte("part one, "))
			w.(http.Flusher).Flush() // no Content-Length: chunked
			w.Write([]byte("part two"))
		case "/busy":
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			w.Write([]byte("ok"))
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, c := range []struct {
		path       string
		wantStatus bool
	}{{"/", false}, {"/chunked", false}, {"/busy", true}, {"/", false}} {
		cn := &conn{g: &gen{addr: addr, req: []byte("GET " + c.path + " HTTP/1.1\r\nHost: x\r\n\r\n")}}
		for range 3 { // the same connection, request after request
			err := cn.Do()
			if c.wantStatus != errors.Is(err, measure.ErrStatus) || (!c.wantStatus && err != nil) {
				t.Fatalf("%s: err = %v, want status error %t", c.path, err, c.wantStatus)
			}
		}
		if c.wantStatus {
			if err := cn.Do(); err == nil || !strings.Contains(err.Error(), "503") {
				t.Errorf("%s: err = %v, want one naming 503", c.path, err)
			}
		}
		cn.Close()
	}
}

const h2loadOutput = `starting benchmark...
Main benchmark duration is started for thread #0.
finished in 4.00s, 19267.00 req/s, 2.24MB/s
requests: 57801 total, 57801 started, 57801 done, 57790 succeeded, 7 failed, 3 errored, 1 timeout
status codes: 57865 2xx, 1 3xx, 2 4xx, 4 5xx
traffic: 6.73MB (7053106) total, 302.83KB (310100) headers (space savings 95.11%), 7.36MB (7719700) data
`

func TestParseH2loadSummary(t *testing.T) {
	s, err := parseH2loadSummary(h2loadOutput)
	if err != nil {
		t.Fatal(err)
	}
	if s.succeeded != 57790 || s.failed != 11 || s.non2xx != 7 {
		t.Errorf("summary = %+v, want 57790 succeeded, 11 failed, 7 non-2xx", s)
	}
	for _, drop := range []string{"requests:", "status codes:"} {
		var kept []string
		for _, l := range strings.Split(h2loadOutput, "\n") {
			if !strings.HasPrefix(l, drop) {
				kept = append(kept, l)
			}
		}
		if _, err := parseH2loadSummary(strings.Join(kept, "\n")); err == nil || !strings.Contains(err.Error(), drop) {
			t.Errorf("without %q: err = %v, want one naming the line", drop, err)
		}
	}
}

func TestReadH2loadLog(t *testing.T) {
	var h measure.Hist
	failed, err := readH2loadLog(strings.NewReader("1796149262840148\t200\t500\n1796149262840149\t-1\t9\n\n1796149262840150\t200\t1500\n"), &h)
	if err != nil || failed != 1 || h.Count() != 2 || h.MaxUs() != 1500 {
		t.Fatalf("failed %d, err %v, count %d, max %v µs; want 1, nil, 2, 1500", failed, err, h.Count(), h.MaxUs())
	}
	if _, err := readH2loadLog(strings.NewReader("1\t200\t5\n2\t200\n"), &h); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("short line: err = %v, want one naming line 2", err)
	}
	if _, err := readH2loadLog(strings.NewReader("1\t200\tfast\n"), &h); err == nil || !strings.Contains(err.Error(), `"fast"`) {
		t.Errorf("bad duration: err = %v, want one naming it", err)
	}
}

func TestH2loadArgs(t *testing.T) {
	h := h2loadRun{bin: "h2load", url: "http://127.0.0.1:1/", conns: 8, streams: 16}
	got := strings.Join(h.args(time.Second, 5*time.Second, "/tmp/log"), " ")
	want := "-c 8 -m 16 -t 1 -D 5000ms --warm-up-time 1000ms --log-file /tmp/log http://127.0.0.1:1/"
	if got != want {
		t.Errorf("args = %q, want %q", got, want)
	}
}

// h2cServer starts a net/http server that speaks HTTP/2 without TLS.
func h2cServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func TestProbeH2C(t *testing.T) {
	addr := h2cServer(t)
	if err := probeH2C("http://" + addr + "/"); err != nil {
		t.Errorf("probe: %v", err)
	}
	if err := probeH2C("http://" + addr + "/missing"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("probe of a 404: err = %v, want one naming 404", err)
	}
}

// TestH2loadRun drives the real h2load for a short window.
func TestH2loadRun(t *testing.T) {
	bin, err := exec.LookPath("h2load")
	if err != nil {
		testenv.RequireOrSkip(t, "h2load (nghttp2-client) is not installed")
	}
	addr := h2cServer(t)
	h := h2loadRun{bin: bin, url: "http://" + addr + "/", conns: 2, streams: 4}
	r, err := h.run(time.Second, time.Second, &measure.Meter{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests == 0 || r.Errors != 0 || r.Lat.Count() != r.Requests {
		t.Errorf("requests %d, errors %d, latencies %d; want > 0, 0, one per request", r.Requests, r.Errors, r.Lat.Count())
	}
	h.url = "http://127.0.0.1:1/" // nothing listens on port 1
	if _, err := h.run(time.Second, time.Second, &measure.Meter{}); err == nil || !strings.Contains(err.Error(), "h2load") {
		t.Errorf("h2load against a closed port: err = %v, want one naming h2load", err)
	}
}
