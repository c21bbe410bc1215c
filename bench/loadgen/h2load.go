package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/bench/internal/measure"
)

// h2loadRun drives h2load (nghttp2) for the HTTP/2 rows: a closed loop,
// h2c with prior knowledge, -t 1, conns connections with streams
// concurrent streams each. h2load does the load; this program reads the
// proxy's /proc counters around h2load's main window, which opens when
// h2load prints that its warm-up is over, and reads the requests and
// per-request latencies (--log-file) h2load recorded in that window.
// h2load's CPU counts on the load side.
//
// h2load's own fixed-rate mode (--rps) releases requests in bursts per
// connection, so its percentiles would measure h2load; the fixed-rate
// HTTP/2 latency comes from bench/grpcbench instead.
type h2loadRun struct {
	bin     string
	url     string
	conns   int
	streams int
}

func durArg(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + "ms" }

func (h h2loadRun) args(warmup, dur time.Duration, logFile string) []string {
	a := []string{"-c", strconv.Itoa(h.conns), "-m", strconv.Itoa(h.streams), "-t", "1",
		"-D", durArg(dur), "--warm-up-time", durArg(warmup), "--log-file", logFile}
	return append(a, h.url)
}

// mainStarted is the line h2load prints when its measured window opens.
const mainStarted = "Main benchmark duration is started"

func (h h2loadRun) run(warmup, dur time.Duration, m *measure.Meter) (measure.Result, error) {
	if warmup < time.Second {
		warmup = time.Second // h2load's warm-up unit is coarse; less is not honoured reliably
	}
	logf, err := os.CreateTemp("", "h2load-*.log")
	if err != nil {
		return measure.Result{}, err
	}
	logf.Close()
	defer os.Remove(logf.Name())
	cmd := exec.Command(h.bin, h.args(warmup, dur, logf.Name())...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return measure.Result{}, err
	}
	if err := cmd.Start(); err != nil {
		return measure.Result{}, fmt.Errorf("h2load: %w", err)
	}
	m.Aux = append(m.Aux, cmd.Process.Pid)
	var stdout bytes.Buffer
	sc := bufio.NewScanner(io.TeeReader(out, &stdout))
	started := false
	for !started && sc.Scan() {
		started = strings.Contains(sc.Text(), mainStarted)
	}
	var res measure.Result
	if started {
		var measuring atomic.Bool
		zero := func() (uint64, uint64, uint64) { return 0, 0, 0 }
		res = measure.WindowNow(zero, &measuring, dur, m)
	}
	_, _ = io.Copy(io.Discard, io.TeeReader(out, &stdout))
	werr := cmd.Wait()
	if !started || werr != nil {
		return res, fmt.Errorf("h2load %s: %v (did not reach its main window: %t): %s %s", strings.Join(cmd.Args[1:], " "), werr, !started,
			lastLines(stdout.String(), 3), lastLines(stderr.String(), 3))
	}
	sum, err := parseH2loadSummary(stdout.String())
	if err != nil {
		return res, err
	}
	if sum.succeeded == 0 {
		return res, fmt.Errorf("h2load %s: no request succeeded in the main window: %s", h.url, lastLines(stderr.String()+stdout.String(), 4))
	}
	res.Requests = sum.succeeded
	res.Errors = sum.failed + sum.non2xx
	lf, err := os.Open(logf.Name())
	if err != nil {
		return res, err
	}
	defer lf.Close()
	failed, err := readH2loadLog(lf, &res.Lat)
	if err != nil {
		return res, fmt.Errorf("h2load --log-file: %w", err)
	}
	res.Svc.Merge(&res.Lat)
	if failed > res.Errors {
		res.Errors = failed
	}
	return res, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

type h2loadSummary struct {
	succeeded, failed, non2xx uint64
}

var (
	reRequests = regexp.MustCompile(`(?m)^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	reStatus   = regexp.MustCompile(`(?m)^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)
)

// parseH2loadSummary reads the summary h2load prints at the end of a run.
func parseH2loadSummary(out string) (h2loadSummary, error) {
	var s h2loadSummary
	m := reRequests.FindStringSubmatch(out)
	if m == nil {
		return s, errors.New("h2load output has no \"requests: N total, ...\" line")
	}
	n := func(v string) uint64 { x, _ := strconv.ParseUint(v, 10, 64); return x }
	s.succeeded = n(m[4])
	s.failed = n(m[5]) + n(m[6]) + n(m[7])
	if m := reStatus.FindStringSubmatch(out); m != nil {
		s.non2xx = n(m[2]) + n(m[3]) + n(m[4])
	} else {
		return s, errors.New("h2load output has no \"status codes: ...\" line")
	}
	return s, nil
}

// readH2loadLog records the latency of every request in an h2load
// --log-file (start µs, status, µs to the end of the response; status -1
// for a failed stream) and returns how many failed.
func readH2loadLog(r io.Reader, h *measure.Hist) (failed uint64, err error) {
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) < 3 {
			return failed, fmt.Errorf("line %d: %d columns, want 3", line, len(f))
		}
		if f[1] == "-1" {
			failed++
			continue
		}
		us, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return failed, fmt.Errorf("line %d: duration %q: %w", line, f[2], err)
		}
		h.Record(time.Duration(us) * time.Microsecond)
	}
	return failed, sc.Err()
}

// probeH2C sends one GET over HTTP/2 without TLS (prior knowledge) and
// fails unless it answers 200.
func probeH2C(url string) error {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: &http.Transport{Protocols: p}, Timeout: 2 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		return fmt.Errorf("%s: %s over %s, want 200 over HTTP/2", url, resp.Status, resp.Proto)
	}
	return nil
}
