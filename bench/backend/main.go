// Command backend is the benchmark's upstream application: a plain
// net/http server that answers every request with a fixed 100-byte body
// (Content-Length set, keep-alive). It stands for "the app" behind the
// proxies that bench/run.sh compares.
//
// With -h2c it speaks HTTP/2 without TLS (prior knowledge) instead, through
// a frame-level server (h2c.go) that costs a fraction of net/http's HTTP/2
// server, so that the HTTP/2 rows measure the proxies rather than the
// backend they share a core with.
//
//	backend -addr 127.0.0.1:18080 [-size 100] [-h2c]
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (127.0.0.1 only in the harness)")
	size := flag.Int("size", 100, "response body size in bytes")
	h2c := flag.Bool("h2c", false, "speak HTTP/2 without TLS (prior knowledge) instead of HTTP/1.1")
	flag.Parse()
	if *size < 0 || (*h2c && *size > 16384) {
		log.Fatalf("backend: -size %d: want 0 to 16384 with -h2c (one DATA frame), at least 0 without", *size)
	}

	body := bytes.Repeat([]byte("x"), *size)
	clen := strconv.Itoa(len(body))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd["Content-Type"] = []string{"text/plain"}
		hd["Content-Length"] = []string{clen}
		_, _ = w.Write(body)
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("backend: %v", err)
	}
	fmt.Fprintf(os.Stdout, "backend listening on %s\n", ln.Addr())
	if *h2c {
		log.Fatalf("backend: %v", newH2CServer(body).serve(ln))
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          log.New(os.Stderr, "backend: ", 0),
	}
	if err := srv.Serve(ln); err != nil {
		log.Fatalf("backend: %v", err)
	}
}
