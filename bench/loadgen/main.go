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
// The result is one line of key=value pairs on stdout.
//
//	loadgen -addr 127.0.0.1:8080 -mode closed -c 32 -warmup 2s -d 8s -pids 1234
//	loadgen -addr 127.0.0.1:8080 -mode open -rate 2000 -c 32 -d 8s
//	loadgen -free-ports 4
//	loadgen -addr 127.0.0.1:15000 -path /ready -probe
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	var (
		addr      = flag.String("addr", "", "target host:port")
		path      = flag.String("path", "/", "request path")
		host      = flag.String("host", "bench", "Host header")
		mode      = flag.String("mode", "closed", "closed (throughput) or open (fixed rate)")
		conns     = flag.Int("c", 32, "connections (= max requests in flight)")
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
	m := &meter{pids: parsePids("-pids", *pids), aux: append(parsePids("-aux-pids", *auxPids), os.Getpid()), clkTck: *clkTck}
	req := []byte("GET " + *path + " HTTP/1.1\r\nHost: " + *host + "\r\nUser-Agent: sidemesh-bench\r\n\r\n")
	g := &gen{addr: *addr, req: req}
	if *probe {
		cn := &conn{g: g}
		err := cn.do()
		cn.close()
		if err != nil {
			fatal(err)
		}
		return
	}

	var res result
	switch *mode {
	case "closed":
		res = g.closed(*conns, *warmup, *dur, m)
	case "open":
		res = g.open(*conns, *rate, *queue, *maxLag, *warmup, *dur, m)
	default:
		fatal(fmt.Errorf("-mode %q: want closed or open", *mode))
	}
	res.label, res.mode, res.conns, res.rate = *label, *mode, *conns, *rate
	res.print(os.Stdout)
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

var errStatus = errors.New("non-200 status")

// do sends one request and reads the whole response. On any error the
// connection is closed and the next call dials a new one.
func (cn *conn) do() error {
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
		cn.close()
	}
	return err
}

func (cn *conn) close() {
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
	ok200 := string(line[9:12]) == "200"
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
		return keep, errStatus
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

// ---- histogram: log-linear, 128 sub-buckets per power of two (<1% error) ----

const subBits = 7

type hist struct {
	counts [64 << subBits]uint64
	n      uint64
	max    int64
}

func bucketOf(v int64) int {
	if v < 1<<subBits {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - subBits // >= 1
	return e<<subBits | int(uint64(v)>>(e-1)&(1<<subBits-1))
}

// midOf is the midpoint of bucket b (the value a quantile reports).
func midOf(b int) float64 {
	if b < 1<<subBits {
		return float64(b)
	}
	e := b >> subBits
	m := b & (1<<subBits - 1)
	lo := (uint64(1<<subBits) | uint64(m)) << (e - 1)
	width := uint64(1) << (e - 1)
	return float64(lo) + float64(width)/2
}

func (h *hist) record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	h.counts[bucketOf(v)]++
	h.n++
	if v > h.max {
		h.max = v
	}
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	if o.max > h.max {
		h.max = o.max
	}
}

// quantile returns the q-quantile in microseconds.
func (h *hist) quantile(q float64) float64 {
	if h.n == 0 {
		return math.NaN()
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			return math.Min(midOf(b), float64(h.max)) / 1e3
		}
	}
	return float64(h.max) / 1e3
}

// ---- process accounting ----

type procSample struct {
	cpuTicks uint64 // user + system
	sysTicks uint64
	rssKB    uint64
	hwmKB    uint64
}

func sampleProcs(pids []int) (procSample, error) {
	var s procSample
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return s, err
		}
		// Fields after the last ')' start at field 3 (state); utime and
		// stime are fields 14 and 15.
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			return s, fmt.Errorf("/proc/%d/stat: short", pid)
		}
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		s.cpuTicks += ut + st
		s.sysTicks += st
		st2, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			return s, err
		}
		for _, line := range strings.Split(string(st2), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			switch k {
			case "VmRSS":
				s.rssKB += n
			case "VmHWM":
				s.hwmKB += n
			}
		}
	}
	return s, nil
}

// ---- results ----

type result struct {
	label, mode string
	conns       int
	rate        float64
	elapsed     time.Duration
	requests    uint64
	errors      uint64
	dropped     uint64
	skipped     uint64
	lat, svc    hist
	procs       bool
	cpu         float64 // seconds, user + system
	cpuSys      float64 // seconds, system
	rssKB       uint64
	hwmKB       uint64
	lastErr     string
	schedLag    *hist     // open loop: release time minus scheduled time
	loadCores   float64   // CPU of the load side (backend + generator), in cores
	cpuBusy     []float64 // per CPU, busy fraction of the window (everything running on it)
}

func (r *result) print(w io.Writer) {
	rps := float64(r.requests) / r.elapsed.Seconds()
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
	fmt.Fprintf(w, "label=%s mode=%s conns=%d secs=%.3f requests=%d errors=%d dropped=%d rps=%s p50_us=%s p90_us=%s p99_us=%s p999_us=%s max_us=%s svc_p50_us=%s svc_p99_us=%s",
		r.label, r.mode, r.conns, r.elapsed.Seconds(), r.requests, r.errors, r.dropped, f(rps),
		f(r.lat.quantile(0.50)), f(r.lat.quantile(0.90)), f(r.lat.quantile(0.99)), f(r.lat.quantile(0.999)),
		f(float64(r.lat.max)/1e3), f(r.svc.quantile(0.50)), f(r.svc.quantile(0.99)))
	if r.mode == "open" {
		fmt.Fprintf(w, " target_rps=%s skipped=%d sched_lag_p50_us=%s sched_lag_p99_us=%s", f(r.rate), r.skipped, f(r.schedLag.quantile(0.5)), f(r.schedLag.quantile(0.99)))
	}
	if r.procs {
		per, sys := math.NaN(), math.NaN()
		if r.requests > 0 {
			per = r.cpu / float64(r.requests) * 1e6
			sys = r.cpuSys / float64(r.requests) * 1e6
		}
		fmt.Fprintf(w, " cpu_s=%.2f cpu_us_per_req=%s sys_us_per_req=%s cpu_cores=%.3f rss_kb=%d hwm_kb=%d",
			r.cpu, f(per), f(sys), r.cpu/r.elapsed.Seconds(), r.rssKB, r.hwmKB)
	}
	busy := make([]string, len(r.cpuBusy))
	for i, b := range r.cpuBusy {
		busy[i] = strconv.FormatFloat(b, 'f', 2, 64)
	}
	fmt.Fprintf(w, " load_cores=%.3f cpu_busy=%s", r.loadCores, strings.Join(busy, "/"))
	fmt.Fprintln(w)
	if r.lastErr != "" {
		fmt.Fprintf(os.Stderr, "loadgen %s: %d errors, last: %s\n", r.label, r.errors, r.lastErr)
	}
}

type worker struct {
	lat, svc hist
	requests atomic.Uint64
	errors   atomic.Uint64
	lastErr  atomic.Value
}

// meter says what to account for besides requests: the proxy's processes,
// the load side's processes (backend and this generator), per-CPU busy time.
type meter struct {
	pids   []int // the proxy
	aux    []int // backend + this generator
	clkTck int
}

func parsePids(flagName, s string) []int {
	var out []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		p, err := strconv.Atoi(f)
		if err != nil {
			fatal(fmt.Errorf("%s: %v", flagName, err))
		}
		out = append(out, p)
	}
	return out
}

// cpuTimes returns busy and total ticks per CPU from /proc/stat.
func cpuTimes() (busy, total []uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil, nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		var t, idle uint64
		for i, v := range f[1:] {
			n, _ := strconv.ParseUint(v, 10, 64)
			if i >= 8 { // guest time is already counted in user
				break
			}
			t += n
			if i == 3 || i == 4 { // idle, iowait
				idle += n
			}
		}
		busy = append(busy, t-idle)
		total = append(total, t)
	}
	return busy, total
}

// window runs warmup, samples the processes and the counters, runs the
// measured window, samples again.
func window(ws []*worker, measuring *atomic.Bool, warmup, dur time.Duration, m *meter) result {
	time.Sleep(warmup)
	var r result
	sum := func() (req, errs uint64) {
		for _, w := range ws {
			req += w.requests.Load()
			errs += w.errors.Load()
		}
		return
	}
	p0, perr := sampleProcs(m.pids)
	a0, aerr := sampleProcs(m.aux)
	b0, t0s := cpuTimes()
	req0, err0 := sum()
	t0 := time.Now()
	measuring.Store(true)
	time.Sleep(dur)
	measuring.Store(false)
	req1, err1 := sum()
	r.elapsed = time.Since(t0)
	p1, perr1 := sampleProcs(m.pids)
	a1, aerr1 := sampleProcs(m.aux)
	b1, t1s := cpuTimes()
	r.requests, r.errors = req1-req0, err1-err0
	if len(m.pids) > 0 && perr == nil && perr1 == nil {
		r.procs = true
		r.cpu = float64(p1.cpuTicks-p0.cpuTicks) / float64(m.clkTck)
		r.cpuSys = float64(p1.sysTicks-p0.sysTicks) / float64(m.clkTck)
		r.rssKB, r.hwmKB = p1.rssKB, p1.hwmKB
	} else if perr != nil || perr1 != nil {
		fmt.Fprintln(os.Stderr, "loadgen: reading /proc:", perr, perr1)
	}
	if aerr == nil && aerr1 == nil {
		r.loadCores = float64(a1.cpuTicks-a0.cpuTicks) / float64(m.clkTck) / r.elapsed.Seconds()
	}
	if len(b0) == len(b1) {
		for i := range b0 {
			if dt := t1s[i] - t0s[i]; dt > 0 {
				r.cpuBusy = append(r.cpuBusy, float64(b1[i]-b0[i])/float64(dt))
			}
		}
	}
	return r
}

func (r *result) collect(ws []*worker) {
	for _, w := range ws {
		r.lat.merge(&w.lat)
		r.svc.merge(&w.svc)
		if e, ok := w.lastErr.Load().(string); ok {
			r.lastErr = e
		}
	}
}

// closed: each connection sends back to back.
func (g *gen) closed(n int, warmup, dur time.Duration, m *meter) result {
	var measuring, stop atomic.Bool
	ws := make([]*worker, n)
	var wg sync.WaitGroup
	for i := range ws {
		w := &worker{}
		ws[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			cn := &conn{g: g}
			defer cn.close()
			for !stop.Load() {
				t := time.Now()
				err := cn.do()
				if err != nil {
					w.errors.Add(1)
					w.lastErr.Store(err.Error())
					if !errors.Is(err, errStatus) {
						time.Sleep(10 * time.Millisecond) // do not spin on a refused dial
					}
					continue
				}
				if measuring.Load() {
					d := time.Since(t)
					w.lat.record(d)
					w.svc.record(d)
				}
				w.requests.Add(1)
			}
		}()
	}
	r := window(ws, &measuring, warmup, dur, m)
	stop.Store(true)
	wg.Wait()
	r.collect(ws)
	return r
}

// open: a scheduler releases requests at the given rate to n persistent
// connections through a bounded queue. A request's latency runs from its
// release: waiting in the queue for a free connection counts (a stall of
// the system under test delays every request behind it: no coordinated
// omission), the scheduler's own timer slack does not. On Linux a Go timer
// wakes up to ~1 ms late (the netpoller sleeps in whole milliseconds), so
// requests due meanwhile are released together when it wakes; that slack is
// reported separately as sched_lag_p99_us.
func (g *gen) open(n int, rate float64, queue int, maxLag time.Duration, warmup, dur time.Duration, m *meter) result {
	var measuring atomic.Bool
	var droppedMeasured, skippedMeasured atomic.Uint64
	type job struct {
		at       time.Time // when the scheduler released it
		measured bool
	}
	jobs := make(chan job, queue)
	ws := make([]*worker, n)
	var wg sync.WaitGroup
	for i := range ws {
		w := &worker{}
		ws[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			cn := &conn{g: g}
			defer cn.close()
			for j := range jobs {
				t := time.Now()
				err := cn.do()
				now := time.Now()
				if err != nil {
					w.errors.Add(1)
					w.lastErr.Store(err.Error())
					continue
				}
				if j.measured {
					w.lat.record(now.Sub(j.at))
					w.svc.record(now.Sub(t))
				}
				w.requests.Add(1)
			}
		}()
	}
	var lag hist
	done := make(chan struct{})
	go func() { // scheduler
		defer close(done)
		interval := time.Duration(float64(time.Second) / rate)
		start := time.Now()
		end := start.Add(warmup + dur + 50*time.Millisecond)
		next := start
		for next.Before(end) {
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			now := time.Now()
			m := measuring.Load()
			for ; !next.After(now); next = next.Add(interval) {
				if m {
					lag.record(now.Sub(next))
				}
				if now.Sub(next) > maxLag {
					// The generator itself was not running (CPU taken by
					// others): releasing this slot now would be a burst
					// the rate never asked for. Skip it and count it.
					if m {
						skippedMeasured.Add(1)
					}
					continue
				}
				select {
				case jobs <- job{at: now, measured: m}:
				default:
					if m {
						droppedMeasured.Add(1)
					}
				}
			}
		}
	}()
	r := window(ws, &measuring, warmup, dur, m)
	<-done
	close(jobs)
	wg.Wait()
	r.collect(ws)
	r.dropped = droppedMeasured.Load()
	r.skipped = skippedMeasured.Load()
	r.schedLag = &lag
	return r
}
