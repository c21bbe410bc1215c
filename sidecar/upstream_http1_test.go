package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestLeanH1StaleConnectionRetried(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns, closed atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				// Answer one request with a keep-alive response, then close
				// without saying so: the sidecar's pooled conn goes stale.
				defer closed.Add(1)
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}()
		}
	}()
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", ln.Addr().String(), 1))
	c := h1Client()
	for i := 0; i < 20; i++ {
		resp, body := get(t, c, "http://"+s.UpstreamAddr("api")+"/")
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		eventually(t, 5*time.Second, "upstream closed its connections", func() bool { return closed.Load() == conns.Load() })
		// POST with a small body is replayable (buffered) too.
		r, err := c.Post("http://"+s.UpstreamAddr("api")+"/", "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("post %d: %d %q", i, r.StatusCode, b)
		}
	}
	if conns.Load() < 20 {
		t.Fatalf("only %d upstream connections: the stale path was not exercised", conns.Load())
	}
}

func TestLeanH1Semantics(t *testing.T) {
	big := make([]byte, 1<<20)
	_, _ = rand.Read(big)
	be := startBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			data, _ := io.ReadAll(r.Body) // HTTP/1.x handlers read the body before answering
			w.Header().Set("Trailer", "X-Sum")
			_, _ = w.Write(data)
			w.Header().Set("X-Sum", fmt.Sprint(len(data)))
		case "/early":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			fmt.Fprint(w, "final")
		case "/nocontent":
			w.WriteHeader(204)
		case "/notmodified":
			w.WriteHeader(304)
		case "/big":
			_, _ = w.Write(big)
		case "/close":
			w.Header().Set("Connection", "close")
			fmt.Fprint(w, "bye")
		default:
			w.Header().Set("Content-Length", "5")
			if r.Method != "HEAD" {
				fmt.Fprint(w, "hello")
			}
		}
	})
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", be.addr, 1))
	base := "http://" + s.UpstreamAddr("api")
	c := h1Client()

	// Chunked request body (unknown length), echoed with a trailer.
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < 10; i++ {
			_, _ = pw.Write(bytes.Repeat([]byte("x"), 1000))
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", base+"/echo", pr)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(body) != 10000 || resp.Trailer.Get("X-Sum") != "10000" {
		t.Fatalf("chunked echo: %d bytes, trailer %q", len(body), resp.Trailer.Get("X-Sum"))
	}
	if resp, body := get(t, c, base+"/early"); resp.StatusCode != 200 || body != "final" {
		t.Fatalf("103 then 200: %d %q", resp.StatusCode, body)
	}
	for path, code := range map[string]int{"/nocontent": 204, "/notmodified": 304} {
		if resp, _ := get(t, c, base+path); resp.StatusCode != code {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
	hreq, _ := http.NewRequest("HEAD", base+"/", nil)
	hresp, err := c.Do(hreq)
	if err != nil || hresp.StatusCode != 200 || hresp.ContentLength != 5 {
		t.Fatalf("HEAD: %v %+v", err, hresp)
	}
	hresp.Body.Close()
	if resp, body := get(t, c, base+"/big"); resp.StatusCode != 200 || body != string(big) {
		t.Fatalf("big body: %d, %d bytes", resp.StatusCode, len(body))
	}
	for i := 0; i < 3; i++ {
		if resp, body := get(t, c, base+"/close"); resp.StatusCode != 200 || body != "bye" {
			t.Fatalf("Connection: close: %d %q", resp.StatusCode, body)
		}
	}
	// Everything above left nothing in flight.
	eventually(t, 5*time.Second, "no active requests", func() bool {
		return endpointHealth(t, s, be.addr).RqActive == 0
	})
}

func TestLeanH1ClientLeavesMidBody(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	be := startBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, strings.Repeat("x", 1000))
		w.(http.Flusher).Flush()
		select {
		case <-block:
		case <-r.Context().Done():
		}
	})
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", be.addr, 1))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+s.UpstreamAddr("api")+"/", nil)
	resp, err := h1Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	eventually(t, 5*time.Second, "request accounting released", func() bool {
		e := endpointHealth(t, s, be.addr)
		return e.RqActive == 0 && e.CxActive == 0
	})
}

func TestLeanH1EarlyHintsRelayed(t *testing.T) {
	be := startBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		fmt.Fprint(w, "final")
	})
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", be.addr, 1))
	var hints []string
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			hints = append(hints, fmt.Sprint(code, " ", h.Get("Link")))
			return nil
		},
	})
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+s.UpstreamAddr("api")+"/", nil)
	resp, err := h1Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "final" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if len(hints) != 1 || hints[0] != "103 </a.css>; rel=preload" {
		t.Fatalf("client saw interim responses %q", hints)
	}
}
