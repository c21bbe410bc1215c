// Command backend is the benchmark's upstream application: a plain
// net/http server that answers every request with a fixed 100-byte body
// (Content-Length set, keep-alive). It stands for "the app" behind the
// proxies that bench/run.sh compares.
//
//	backend -addr 127.0.0.1:18080 [-size 100]
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
	flag.Parse()

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
