// Command loadgen is the benchmark's HTTP/1.1 load generator. It speaks
// just enough HTTP/1.1 over persistent connections (one request in flight
// per connection, no pipelining) to stay cheap, so that the core it shares
// with the backend goes to the backend, and it never grows past the bounds
// it is given.
//
// Closed loop (throughput): -c connections, each sends its next request as
// soon as the previous response is read, for -d after -warmup.
//
// Open loop (latency at a fixed rate): a scheduler releases a request every
// 1/-rate seconds to -c persistent connections through a queue of at most
// -queue requests; a request that finds the queue full is dropped and
// counted, never sent on an extra connection. So in-flight requests are
// bounded by -c, connections by -c, waiting requests by -queue. Latency runs
// from a request's release, so time spent waiting for a free connection
// counts (a stall of the system under test delays every request behind it:
// no coordinated omission); the latency from the actual write is reported
// too (svc_*). Slots the scheduler reaches more than -max-lag late (the
// generator itself was not running) are skipped and counted, not released
// as a burst.
//
// -pids lists processes (the proxy) whose user+system CPU time
// (/proc/PID/stat) is read at the start and the end of the measured window,
// and whose RSS (/proc/PID/status) is read at the end. -aux-pids (the
// backend) and the generator itself are accounted as load_cores, and every
// CPU's busy fraction over the window (/proc/stat, whatever ran on it) is
// reported as cpu_busy, to tell which side was the bottleneck and how much
// other work shared the cores.
//
// h2load mode (HTTP/2 rows): runs nghttp2's h2load, a closed loop over -c
// connections of -m concurrent streams each (h2c prior knowledge), and
// reads the same /proc counters around h2load's main window. Latencies
// come from h2load's --log-file and run from each request's send.
//
// The result is one line of key=value pairs on stdout.
//
//	loadgen -addr 127.0.0.1:8080 -mode closed -c 32 -warmup 2s -d 8s -pids 1234
//	loadgen -addr 127.0.0.1:8080 -mode open -rate 2000 -c 32 -d 8s
//	loadgen -addr 127.0.0.1:8080 -mode h2load -c 8 -m 16 -d 5s -pids 1234
//	loadgen -free-ports 4
//	loadgen -addr 127.0.0.1:15000 -path /ready -probe
//	loadgen -addr 127.0.0.1:8080 -probe -h2c
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/bench/internal/measure"
)

func main() {
	var (
		addr      = flag.String("addr", "", "target host:port")
		path      = flag.String("path", "/", "request path")
		host      = flag.String("host", "bench", "Host header")
		mode      = flag.String("mode", "closed", "closed (throughput), open (fixed rate), or h2load (run h2load for HTTP/2 and account the proxy around it)")
		conns     = flag.Int("c", 32, "connections (= max requests in flight over HTTP/1.1)")
		streams   = flag.Int("m", 16, "h2load: concurrent streams per connection")
		h2loadBin = flag.String("h2load", "h2load", "h2load: the h2load binary")
		rate      = flag.Float64("rate", 2000, "open loop: requests per second")
		queue     = flag.Int("queue", 1000, "open loop: max requests waiting for a free connection; beyond it requests are dropped")
		maxLag    = flag.Duration("max-lag", 5*time.Millisecond, "open loop: slots the scheduler reaches later than this (the generator was descheduled) are skipped and counted, not sent in a burst")
		dur       = flag.Duration("d", 8*time.Second, "measured duration")
		warmup    = flag.Duration("warmup", 2*time.Second, "unmeasured warm-up before the window")
		pids      = flag.String("pids", "", "comma-separated PIDs whose CPU time and RSS to report")
		auxPids   = flag.String("aux-pids", "", "comma-separated PIDs on the load side (the backend); their CPU plus this generator's is reported as load_cores")
		clkTck    = flag.Int("clk-tck", 100, "clock ticks per second for /proc/PID/stat (getconf CLK_TCK)")
		label     = flag.String("label", "", "label echoed in the output")
		freePorts = flag.Int("free-ports", 0, "print this many free 127.0.0.1 TCP ports and exit")
		probe     = flag.Bool("probe", false, "send one request; exit 0 if it answers 200")
		h2c       = flag.Bool("h2c", false, "with -probe: send it over HTTP/2 without TLS (prior knowledge)")
	)
	flag.Parse()
	if *freePorts > 0 {
		if err := printFreePorts(*freePorts); err != nil {
			fatal(err)
		}
		return
	}
	if *addr == "" {
		fatal(errors.New("-addr is required"))
	}
	if *conns < 1 || *dur <= 0 || (*mode == "open" && (*rate <= 0 || *queue < 1)) {
		fatal(errors.New("bad -c, -d, -rate or -queue"))
	}
	proxy, err := measure.ParsePids("-pids", *pids)
	if err != nil {
		fatal(err)
	}
	aux, err := measure.ParsePids("-aux-pids", *auxPids)
	if err != nil {
		fatal(err)
	}
	m := &measure.Meter{Pids: proxy, Aux: append(aux, os.Getpid()), ClkTck: *clkTck}
	req := []byte("GET " + *path + " HTTP/1.1\r\nHost: " + *host + "\r\nUser-Agent: sidemesh-bench\r\n\r\n")
	g := &gen{addr: *addr, req: req}
	if *probe && *h2c {
		if err := probeH2C("http://" + *addr + *path); err != nil {
			fatal(err)
		}
		return
	}
	if *probe {
		cn := &conn{g: g}
		err := cn.Do()
		cn.Close()
		if err != nil {
			fatal(err)
		}
		return
	}

	newConn := func(int) measure.Doer { return &conn{g: g} }
	var res measure.Result
	switch *mode {
	case "closed":
		res = measure.Closed(*conns, newConn, *warmup, *dur, m)
	case "open":
		res = measure.Open(*conns, newConn, *rate, *queue, *maxLag, *warmup, *dur, m)
	case "h2load":
		if *streams < 1 {
			fatal(errors.New("-m must be at least 1"))
		}
		h := h2loadRun{bin: *h2loadBin, url: "http://" + *addr + *path, conns: *conns, streams: *streams}
		res, err = h.run(*warmup, *dur, m)
		if err != nil {
			fatal(err)
		}
	default:
		fatal(fmt.Errorf("-mode %q: want closed, open or h2load", *mode))
	}
	res.Label, res.Mode, res.Conns = *label, *mode, *conns
	res.Print(os.Stdout)
	if res.LastErr != "" {
		fmt.Fprintf(os.Stderr, "loadgen %s: %d errors, last: %s\n", res.Label, res.Errors, res.LastErr)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(1)
}

func printFreePorts(n int) error {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var ports []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		ports = append(ports, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	}
	fmt.Println(strings.Join(ports, " "))
	return nil
}

// ---- HTTP/1.1 client connection ----

type gen struct {
	addr string
	req  []byte
}

type conn struct {
	g  *gen
	c  net.Conn
	br *bufio.Reader
}

// Do sends one request and reads the whole response. On any error the
// connection is closed and the next call dials a new one.
func (cn *conn) Do() error {
	if cn.c == nil {
		c, err := net.DialTimeout("tcp", cn.g.addr, 5*time.Second)
		if err != nil {
			return err
		}
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		cn.c = c
		if cn.br == nil {
			cn.br = bufio.NewReaderSize(c, 16<<10)
		} else {
			cn.br.Reset(c)
		}
	}
	keep, err := cn.roundTrip()
	if err != nil || !keep {
		cn.Close()
	}
	return err
}

// Close closes the connection; the next Do dials a new one.
func (cn *conn) Close() {
	if cn.c != nil {
		cn.c.Close()
		cn.c = nil
	}
}

var (
	hdrContentLength    = []byte("content-length:")
	hdrConnection       = []byte("connection:")
	hdrTransferEncoding = []byte("transfer-encoding:")
)

func hasPrefixFold(line, prefix []byte) bool {
	return len(line) >= len(prefix) && bytes.EqualFold(line[:len(prefix)], prefix)
}

// roundTrip writes the request and reads the response; keep reports whether
// the connection may be reused.
func (cn *conn) roundTrip() (keep bool, err error) {
	if _, err := cn.c.Write(cn.g.req); err != nil {
		return false, err
	}
	line, err := cn.br.ReadSlice('\n')
	if err != nil {
		return false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return false, fmt.Errorf("bad status line %q", line)
	}
	var code [3]byte
	copy(code[:], line[9:12])
	ok200 := string(code[:]) == "200"
	keep = line[7] == '1'
	clen, chunked := int64(-1), false
	for {
		line, err = cn.br.ReadSlice('\n')
		if err != nil {
			return false, err
		}
		if len(line) <= 2 {
			break
		}
		switch {
		case hasPrefixFold(line, hdrContentLength):
			v := bytes.TrimSpace(line[len(hdrContentLength):])
			n, perr := strconv.ParseInt(string(v), 10, 64)
			if perr != nil {
				return false, fmt.Errorf("bad content-length %q", v)
			}
			clen = n
		case hasPrefixFold(line, hdrConnection):
			v := bytes.TrimSpace(line[len(hdrConnection):])
			if bytes.EqualFold(v, []byte("close")) {
				keep = false
			} else if bytes.EqualFold(v, []byte("keep-alive")) {
				keep = true
			}
		case hasPrefixFold(line, hdrTransferEncoding):
			chunked = bytes.Contains(bytes.ToLower(line), []byte("chunked"))
		}
	}
	switch {
	case chunked:
		if err := cn.readChunked(); err != nil {
			return false, err
		}
	case clen >= 0:
		if _, err := cn.br.Discard(int(clen)); err != nil {
			return false, err
		}
	default: // body until close
		_, _ = io.Copy(io.Discard, cn.br)
		keep = false
	}
	if !ok200 {
		return keep, fmt.Errorf("%w: status %s", measure.ErrStatus, code[:])
	}
	return keep, nil
}

func (cn *conn) readChunked() error {
	for {
		line, err := cn.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		s := strings.TrimSpace(string(line))
		if i := strings.IndexByte(s, ';'); i >= 0 {
			s = s[:i]
		}
		n, err := strconv.ParseInt(s, 16, 64)
		if err != nil {
			return fmt.Errorf("bad chunk size %q", s)
		}
		if n == 0 {
			for { // trailers
				line, err = cn.br.ReadSlice('\n')
				if err != nil {
					return err
				}
				if len(line) <= 2 {
					return nil
				}
			}
		}
		if _, err := cn.br.Discard(int(n) + 2); err != nil {
			return err
		}
	}
}
