package sidecar

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
)

// AccessLogConfig is `access_log`: one line per HTTP request and per TCP
// connection, off unless set.
type AccessLogConfig struct {
	// Path is "stdout" or a file (appended to; reopened on SIGUSR1).
	Path string `yaml:"path"`
	// Format is json (default) or text (key=value).
	Format string `yaml:"format"`
}

// AccessLogStdout is the access_log.path that writes to standard output.
const AccessLogStdout = "stdout"

// accessLogBuffer is how many lines wait for the writer; when it is full
// a line is dropped and counted, never waited for.
const accessLogBuffer = 4096

func (a *AccessLogConfig) setDefaults() {
	if a.Format == "" {
		a.Format = "json"
	}
}

func (a *AccessLogConfig) validate() error {
	if a.Path == "" {
		return bad("access_log.path", a.Path, "must be stdout or a file")
	}
	if a.Format != "json" && a.Format != "text" {
		return bad("access_log.format", a.Format, "must be json or text")
	}
	if a.Path != AccessLogStdout {
		f, err := openAccessLog(a.Path)
		if err != nil {
			return bad("access_log.path", a.Path, fmt.Sprintf("cannot be opened: %v", err))
		}
		f.Close()
	}
	return nil
}

func openAccessLog(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
}

// Response flags, in words (Envoy's UH, UO, UT, UF, UR and the retry).
const (
	flagNoHealthy uint8 = 1 << iota
	flagOverloaded
	flagTimeout
	flagConnectFailure
	flagReset
	flagRetried
)

var flagNames = []struct {
	f    uint8
	name string
}{{flagNoHealthy, "no_healthy_upstream"}, {flagOverloaded, "overloaded"}, {flagTimeout, "upstream_timeout"},
	{flagConnectFailure, "connect_failure"}, {flagReset, "upstream_reset"}, {flagRetried, "retried"}}

func flagsOf(k failKind) uint8 {
	switch k {
	case failNoHealthy:
		return flagNoHealthy
	case failOverflow:
		return flagOverloaded
	case failTimeout:
		return flagTimeout
	case failConnect:
		return flagConnectFailure
	case failReset, failRefusedStream, failProtocol:
		return flagReset
	}
	return 0
}

// accessEntry is one line, filled on the request path and formatted by
// the writer.
type accessEntry struct {
	start     time.Time
	duration  time.Duration
	method    string
	authority string
	path      string
	protocol  string
	status    int
	flags     uint8
	attempts  int
	upstream  string
	endpoint  string
	rxBytes   int64 // from downstream
	txBytes   int64 // to downstream
	requestID string
	traceID   trace.TraceID
	source    string // the client's SPIFFE ID (inbound mTLS)
	authz     string // the intentions' decision: allow, deny ("" when none was taken)
}

// accessRecord is what the proxy learns about a request for its line
// (attempts, endpoint, why it failed); it rides in the request context.
type accessRecord struct {
	attempts int
	endpoint string
	flags    uint8
	traceID  trace.TraceID
	source   string // inbound mTLS: the client's SPIFFE ID
	authz    string // inbound mTLS: allow or deny
}

type accessKey struct{}

func accessRecordFrom(ctx context.Context) *accessRecord {
	r, _ := ctx.Value(accessKey{}).(*accessRecord)
	return r
}

// accessLog writes entries from a bounded buffer on its own goroutine.
type accessLog struct {
	cfg     AccessLogConfig
	ch      chan accessEntry
	reopen  chan chan error
	done    chan struct{}
	stopped chan struct{}
	dropped prometheus.Counter
	once    sync.Once

	// out is where lines go; only the writer goroutine uses it.
	out    io.Writer
	file   *os.File
	closed atomic.Bool
}

func newAccessLog(cfg AccessLogConfig, dropped prometheus.Counter, stdout io.Writer) (*accessLog, error) {
	l := &accessLog{cfg: cfg, ch: make(chan accessEntry, accessLogBuffer), reopen: make(chan chan error),
		done: make(chan struct{}), stopped: make(chan struct{}), dropped: dropped}
	if cfg.Path == AccessLogStdout {
		l.out = stdout
	} else {
		f, err := openAccessLog(cfg.Path)
		if err != nil {
			return nil, bad("access_log.path", cfg.Path, fmt.Sprintf("cannot be opened: %v", err))
		}
		l.file, l.out = f, f
	}
	go l.run()
	return l, nil
}

// log queues an entry; a full buffer drops it (counted), never blocks.
func (l *accessLog) log(e accessEntry) {
	if l.closed.Load() {
		l.dropped.Inc()
		return
	}
	select {
	case l.ch <- e:
	default:
		l.dropped.Inc()
	}
}

// Reopen reopens the file (logrotate moved it away).
func (l *accessLog) Reopen() error {
	if l.file == nil {
		return nil
	}
	res := make(chan error, 1)
	select {
	case l.reopen <- res:
		return <-res
	case <-l.stopped:
		return nil
	}
}

// close writes what is queued and stops.
func (l *accessLog) close() {
	l.once.Do(func() {
		l.closed.Store(true)
		close(l.done)
		<-l.stopped
	})
}

func (l *accessLog) run() {
	defer close(l.stopped)
	w := bufio.NewWriterSize(l.out, 64<<10)
	buf := make([]byte, 0, 512)
	write := func(e accessEntry) {
		buf = l.format(buf[:0], &e)
		_, _ = w.Write(buf)
	}
	for {
		select {
		case e := <-l.ch:
			write(e)
			for n := len(l.ch); n > 0; n-- { // a batch, then one flush
				write(<-l.ch)
			}
			_ = w.Flush()
		case res := <-l.reopen:
			_ = w.Flush()
			f, err := openAccessLog(l.cfg.Path)
			if err == nil {
				l.file.Close()
				l.file, l.out = f, f
				w.Reset(f)
			}
			res <- err
		case <-l.done:
			for n := len(l.ch); n > 0; n-- {
				write(<-l.ch)
			}
			_ = w.Flush()
			if l.file != nil {
				l.file.Close()
			}
			return
		}
	}
}

// format appends one line.
func (l *accessLog) format(b []byte, e *accessEntry) []byte {
	var flags []string
	for _, f := range flagNames {
		if e.flags&f.f != 0 {
			flags = append(flags, f.name)
		}
	}
	trace := ""
	if e.traceID.IsValid() {
		trace = e.traceID.String()
	}
	if l.cfg.Format == "text" {
		fl := "-"
		if len(flags) > 0 {
			fl = strings.Join(flags, ",")
		}
		b = fmt.Appendf(b, "start=%s duration_ms=%.3f method=%s authority=%q path=%q protocol=%s status=%d flags=%s attempts=%d upstream=%s endpoint=%s bytes_received=%d bytes_sent=%d request_id=%s trace_id=%s source=%s authz=%s\n",
			e.start.UTC().Format(time.RFC3339Nano), float64(e.duration)/1e6, dash(e.method), e.authority, e.path, e.protocol,
			e.status, fl, e.attempts, dash(e.upstream), dash(e.endpoint), e.rxBytes, e.txBytes, dash(e.requestID), dash(trace),
			dash(e.source), dash(e.authz))
		return b
	}
	if flags == nil {
		flags = []string{}
	}
	line := struct {
		Start     string   `json:"start_time"`
		Duration  float64  `json:"duration_ms"`
		Method    string   `json:"method,omitempty"`
		Authority string   `json:"authority,omitempty"`
		Path      string   `json:"path,omitempty"`
		Protocol  string   `json:"protocol"`
		Status    int      `json:"status"`
		Flags     []string `json:"response_flags"`
		Attempts  int      `json:"attempts"`
		Upstream  string   `json:"upstream"`
		Endpoint  string   `json:"endpoint,omitempty"`
		Rx        int64    `json:"bytes_received"`
		Tx        int64    `json:"bytes_sent"`
		RequestID string   `json:"request_id,omitempty"`
		TraceID   string   `json:"trace_id,omitempty"`
		Source    string   `json:"source_identity,omitempty"`
		Authz     string   `json:"authz,omitempty"`
	}{e.start.UTC().Format(time.RFC3339Nano), float64(e.duration) / 1e6, e.method, e.authority, e.path, e.protocol,
		e.status, flags, e.attempts, e.upstream, e.endpoint, e.rxBytes, e.txBytes, e.requestID, trace, e.source, e.authz}
	j, _ := json.Marshal(line)
	b = append(b, j...)
	return append(b, '\n')
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// wrap logs each request h serves for upstream c.
func (l *accessLog) wrap(c *Cluster, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &accessRecord{}
		aw := &accessWriter{ResponseWriter: w, code: http.StatusOK}
		e := accessEntry{start: time.Now(), method: r.Method, authority: r.Host, path: r.URL.Path,
			protocol: r.Proto, upstream: c.Name}
		if id := r.Header.Get("X-Request-Id"); id != "" {
			e.requestID = id
		} else {
			e.requestID = newRequestID()
			r.Header.Set("X-Request-Id", e.requestID) // the id sent upstream is the one logged
		}
		var body *countingBody
		if r.Body != nil && r.Body != http.NoBody {
			body = &countingBody{ReadCloser: r.Body}
			r.Body = body
		}
		h.ServeHTTP(aw, r.WithContext(context.WithValue(r.Context(), accessKey{}, rec)))
		e.duration = time.Since(e.start)
		e.status = aw.code
		if !aw.wrote {
			e.status = 0 // nothing answered (the client went away)
		}
		e.flags, e.attempts, e.endpoint, e.traceID = rec.flags, rec.attempts, rec.endpoint, rec.traceID
		e.source, e.authz = rec.source, rec.authz
		if body != nil {
			e.rxBytes = body.n
		}
		e.txBytes = aw.n
		l.log(e)
	})
}

// accessWriter counts the response; Unwrap keeps Flush, Hijack and
// trailers working through http.ResponseController.
type accessWriter struct {
	http.ResponseWriter
	code  int
	wrote bool
	n     int64
}

func (w *accessWriter) WriteHeader(code int) {
	if !w.wrote && code >= 200 {
		w.code, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *accessWriter) Write(p []byte) (int, error) {
	w.wrote = true
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *accessWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}

// finish records a request's attempts, endpoint and outcome.
func (rec *accessRecord) finish(r *proxyRequest, attempts int, err error) {
	rec.attempts = attempts
	if r.prev != nil {
		rec.endpoint = r.prev.Addr
	}
	if r.retried {
		rec.flags |= flagRetried
	}
	var ue *upstreamError
	if errors.As(err, &ue) {
		rec.flags |= flagsOf(ue.kind)
	} else if err != nil {
		rec.flags |= flagsOf(classify(err, r.ctx))
	}
	if !rec.traceID.IsValid() {
		if sc := trace.SpanContextFromContext(r.ctx); sc.IsValid() {
			rec.traceID = sc.TraceID()
		}
	}
}

// tcpAccess logs one TCP connection.
func (l *accessLog) tcpAccess(c *Cluster, start time.Time, endpoint string, flags uint8, attempts int, rx, tx int64) {
	l.log(accessEntry{start: start, duration: time.Since(start), protocol: "tcp", upstream: c.Name,
		endpoint: endpoint, flags: flags, attempts: attempts, rxBytes: rx, txBytes: tx})
}

// ReopenLogs reopens the access log file (SIGUSR1, after logrotate).
func (s *Sidecar) ReopenLogs() {
	l := s.alog.Load()
	if l == nil {
		return
	}
	if err := l.Reopen(); err != nil {
		s.log.Error("access log not reopened", "path", l.cfg.Path, "err", err)
		return
	}
	s.log.Info("access log reopened", "path", l.cfg.Path)
}

// setAccessLog starts the configured access log (nil: off) and returns
// the previous one, for the caller to close once no handler uses it.
func (s *Sidecar) setAccessLog(cfg *AccessLogConfig) (*accessLog, error) {
	var l *accessLog
	if cfg != nil {
		var err error
		if l, err = newAccessLog(*cfg, s.alogDropped, s.stdout); err != nil {
			return nil, err
		}
	}
	return s.alog.Swap(l), nil
}

func newAccessLogDropped() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: "sidemesh_access_log_dropped_total",
		Help: "Access log lines dropped because the writer fell behind (the buffer was full)."})
}
