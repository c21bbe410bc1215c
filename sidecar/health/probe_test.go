package health

// Checks against real servers on 127.0.0.1. Fake time does not reach real
// sockets, so these tests use short intervals and gate each check on the
// server side: the test releases one answer, waits (polling with a
// deadline) until the checker has recorded one more attempt, and then
// asserts the health. That pins transitions to exact check counts without
// depending on timing.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

const pollDeadline = 10 * time.Second

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(pollDeadline)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func realConfig(mut func(*Config)) Config {
	c := Config{Interval: 20 * time.Millisecond, Timeout: pollDeadline}
	mut(&c)
	c.SetDefaults()
	if err := c.Validate("test"); err != nil {
		panic(err)
	}
	return c
}

func attempts(c *Checker, addr string) uint64 {
	s, _ := c.Status(addr)
	return s.Attempts
}

// step releases one gated answer and waits until the checker recorded it.
func step(t *testing.T, c *Checker, addr string, n int, release func()) Status {
	t.Helper()
	release()
	eventually(t, fmt.Sprintf("check %d", n), func() bool { return attempts(c, addr) >= uint64(n) })
	s, _ := c.Status(addr)
	if s.Attempts != uint64(n) {
		t.Fatalf("after release %d: %d attempts", n, s.Attempts)
	}
	return s
}

// gatedHTTP answers each request with the next status the test sends.
type gatedHTTP struct {
	codes chan int
	mu    sync.Mutex
	hosts []string
	uas   []string
	paths []string
}

func (g *gatedHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case code := <-g.codes:
		g.mu.Lock()
		g.hosts = append(g.hosts, r.Host)
		g.uas = append(g.uas, r.UserAgent())
		g.paths = append(g.paths, r.URL.RequestURI())
		g.mu.Unlock()
		if code >= 300 && code < 400 {
			w.Header().Set("Location", "/elsewhere")
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, strings.Repeat("x", 1000))
	case <-r.Context().Done():
	}
}

func TestHTTPCheckTransitions(t *testing.T) {
	tests := []struct {
		name  string
		check HTTPCheck
		steps []int  // statuses answered, in order
		want  string // health after each step: H or U
	}{
		{
			name:  "default 200 only, other statuses immediate",
			check: HTTPCheck{Path: "/healthz"},
			steps: []int{200, 500, 200, 200, 204, 200, 200},
			want:  "HUUHUUH",
		},
		{
			name:  "retriable 500 counts to the threshold",
			check: HTTPCheck{Path: "/healthz", RetriableStatuses: []StatusRange{{500, 501}}},
			steps: []int{200, 500, 500, 200, 500, 500, 500, 200, 200, 503, 200, 200},
			want:  "HHHHHHUUHUUH",
		},
		{
			name:  "expected range, redirects not followed",
			check: HTTPCheck{Path: "/healthz?full=1", Host: "probe.internal", ExpectedStatuses: []StatusRange{{200, 400}}},
			steps: []int{302, 399, 400, 200, 301},
			want:  "HHUUH",
		},
		{
			name:  "first check failing needs the full threshold",
			check: HTTPCheck{Path: "/healthz"},
			steps: []int{500, 200, 200},
			want:  "UUH",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &gatedHTTP{codes: make(chan int)}
			srv := httptest.NewServer(g)
			defer srv.Close()
			addr := srv.Listener.Addr().String()
			check := tt.check
			c := New(realConfig(func(c *Config) { c.HTTP = &check }), Options{ServiceName: "api"})
			defer c.Close()
			c.SetHosts([]string{addr})
			for i, code := range tt.steps {
				s := step(t, c, addr, i+1, func() { g.codes <- code })
				if got := map[bool]string{true: "H", false: "U"}[s.Healthy]; got != tt.want[i:i+1] {
					t.Fatalf("step %d (status %d): %s, want %s; status %+v", i+1, code, got, tt.want[i:i+1], s)
				}
				if s.Healthy != c.Healthy(addr) {
					t.Fatal("Status and Healthy disagree")
				}
				if code == 500 && !s.Healthy && !strings.Contains(s.LastError, ErrUnexpectedStatus.Error()+": 500") {
					t.Fatalf("last error %q", s.LastError)
				}
			}
			g.mu.Lock()
			defer g.mu.Unlock()
			wantHost := "api"
			if tt.check.Host != "" {
				wantHost = tt.check.Host
			}
			for i := range g.hosts {
				if g.hosts[i] != wantHost || g.uas[i] != UserAgent || g.paths[i] != tt.check.Path {
					t.Fatalf("request %d: host %q ua %q path %q", i, g.hosts[i], g.uas[i], g.paths[i])
				}
			}
		})
	}
}

// gatedTCP serves "PING" → "PONG" when the test sends true, and closes the
// connection without answering when it sends false.
func gatedTCP(t *testing.T) (addr string, answers chan bool) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	answers = make(chan bool)
	done := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() {
		close(done)
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				if err := readUntil(conn, []byte("PING\r\n")); err != nil {
					return
				}
				select {
				case ok := <-answers:
					if ok {
						_, _ = conn.Write([]byte("some banner\r\nPONG\r\n"))
					}
				case <-done:
				}
			})
		}
	})
	return ln.Addr().String(), answers
}

func TestTCPCheckSendExpect(t *testing.T) {
	addr, answers := gatedTCP(t)
	c := New(realConfig(func(c *Config) { c.TCP = &TCPCheck{Send: "PING\r\n", Expect: "PONG"} }), Options{})
	defer c.Close()
	c.SetHosts([]string{addr})
	steps := []bool{true, false, false, false, true, true, false, true}
	want := "HHHUUHHH"
	for i, ok := range steps {
		s := step(t, c, addr, i+1, func() { answers <- ok })
		if got := map[bool]string{true: "H", false: "U"}[s.Healthy]; got != want[i:i+1] {
			t.Fatalf("step %d: %s, want %s; %+v", i+1, got, want[i:i+1], s)
		}
		if !ok && !strings.Contains(s.LastError, ErrExpectNotSeen.Error()) {
			t.Fatalf("step %d: last error %q", i+1, s.LastError)
		}
	}
}

func TestTCPCheckConnect(t *testing.T) {
	open, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	c := New(realConfig(func(c *Config) { c.TCP = &TCPCheck{} }), Options{})
	defer c.Close()
	c.SetHosts([]string{open.Addr().String(), closedAddr})
	eventually(t, "both hosts checked 3 times", func() bool {
		return attempts(c, open.Addr().String()) >= 3 && attempts(c, closedAddr) >= 3
	})
	if !c.Healthy(open.Addr().String()) {
		t.Fatalf("open listener unhealthy: %+v", c.Statuses())
	}
	s, _ := c.Status(closedAddr)
	if s.Healthy || s.Pending || s.ConsecutiveFailures < 3 || !strings.Contains(s.LastError, "refused") {
		t.Fatalf("closed listener: %+v", s)
	}
}

// gatedGRPC is a real grpc server with the standard health service; each
// call waits for the test to release it with an error to return instead of
// the health service's answer, or nil to let the health service answer.
func gatedGRPC(t *testing.T, ln net.Listener) (*health.Server, chan error, func() metadata.MD) {
	t.Helper()
	hs := health.NewServer()
	gate := make(chan error)
	var mu sync.Mutex
	var lastMD metadata.MD
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		mu.Lock()
		lastMD = md
		mu.Unlock()
		select {
		case err := <-gate:
			if err != nil {
				return nil, err
			}
			return h(ctx, req)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}))
	healthpb.RegisterHealthServer(srv, hs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return hs, gate, func() metadata.MD {
		mu.Lock()
		defer mu.Unlock()
		return lastMD
	}
}

func TestGRPCCheckTransitions(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	hs, gate, md := gatedGRPC(t, ln)
	const svc = "api.v1.Api"

	c := New(realConfig(func(c *Config) { c.GRPC = &GRPCCheck{ServiceName: svc} }), Options{ServiceName: "api"})
	defer c.Close()
	c.SetHosts([]string{addr})

	const (
		serving    = healthpb.HealthCheckResponse_SERVING
		notServing = healthpb.HealthCheckResponse_NOT_SERVING
		unknown    = healthpb.HealthCheckResponse_SERVICE_UNKNOWN
	)
	unavailable := status.Error(codes.Unavailable, "overloaded")
	notFound := status.Error(codes.NotFound, "unknown service")
	steps := []struct {
		status  healthpb.HealthCheckResponse_ServingStatus
		err     error // returned instead of the health service's answer
		want    bool
		wantErr string
	}{
		{status: serving, want: true},
		{status: notServing, want: false, wantErr: "health: gRPC service not serving: NOT_SERVING"}, // immediate
		{status: serving, want: false},
		{status: serving, want: true},
		{err: unavailable, want: true, wantErr: "overloaded"}, // counted: 1 of 3
		{err: unavailable, want: true},
		{err: unavailable, want: false, wantErr: "Unavailable"},
		{status: serving, want: false},
		{status: serving, want: true},
		{err: notFound, want: false, wantErr: "NotFound"}, // immediate
		{status: serving, want: false},
		{status: serving, want: true},
		{status: unknown, want: false, wantErr: "SERVICE_UNKNOWN"}, // immediate
	}
	for i, st := range steps {
		if st.err == nil {
			hs.SetServingStatus(svc, st.status)
		}
		s := step(t, c, addr, i+1, func() { gate <- st.err })
		if s.Healthy != st.want {
			t.Fatalf("step %d (%v, %v): healthy=%v; %+v", i+1, st.status, st.err, s.Healthy, s)
		}
		if !strings.Contains(s.LastError, st.wantErr) {
			t.Fatalf("step %d: last error %q, want it to contain %q", i+1, s.LastError, st.wantErr)
		}
	}
	m := md()
	if a := m.Get(":authority"); len(a) != 1 || a[0] != "api" {
		t.Fatalf(":authority %v, want api", a)
	}
	if ua := m.Get("user-agent"); len(ua) != 1 || !strings.HasPrefix(ua[0], UserAgent) {
		t.Fatalf("user-agent %v", ua)
	}
}

// TestGRPCCheckServerRestart: the server goes away and comes back on the
// same address; the checker counts the outage to unhealthy_threshold and
// sees the server again without waiting out gRPC's reconnect backoff.
func TestGRPCCheckServerRestart(t *testing.T) {
	// A port below the ephemeral range: no outgoing connection or listen
	// on port 0 can take it while the server is down.
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePorts(t, 1)[0]))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer()) // "" is SERVING
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()

	var mu sync.Mutex
	var changes []Status // the host's state at each flip
	change := func(i int) Status {
		mu.Lock()
		defer mu.Unlock()
		if i >= len(changes) {
			t.Fatalf("only %d changes: %+v", len(changes), changes)
		}
		return changes[i]
	}
	var c *Checker
	c = New(realConfig(func(cfg *Config) { cfg.GRPC = &GRPCCheck{} }), Options{OnChange: func() {
		s, _ := c.Status(addr)
		mu.Lock()
		changes = append(changes, s)
		mu.Unlock()
	}})
	defer c.Close()
	c.SetHosts([]string{addr})
	eventually(t, "healthy", func() bool { return c.Healthy(addr) })

	srv.Stop()
	<-done
	eventually(t, "unhealthy", func() bool { return !c.Healthy(addr) })
	if s := change(1); s.Healthy || s.ConsecutiveFailures != 3 {
		t.Fatalf("went unhealthy at %+v, want after exactly 3 failures", s)
	}

	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("cannot listen again on %s: %v", addr, err)
	}
	// From here on every fresh connection succeeds. A checker that kept a
	// ClientConn in TRANSIENT_FAILURE would instead fail fast on every
	// 20ms check for the whole reconnect backoff (1s and up).
	s0, _ := c.Status(addr)
	srv2 := grpc.NewServer()
	healthpb.RegisterHealthServer(srv2, health.NewServer())
	done2 := make(chan struct{})
	go func() { defer close(done2); _ = srv2.Serve(ln2) }()
	defer func() { srv2.Stop(); <-done2 }()
	eventually(t, "healthy again", func() bool { return c.Healthy(addr) })
	s := change(2)
	if !s.Healthy || s.ConsecutiveSuccesses != 2 {
		t.Fatalf("healthy again at %+v, want after exactly 2 successes", s)
	}
	// At most the check that was running when the listener came back fails.
	if extra := s.Failures - s0.Failures; extra > 1 {
		t.Errorf("%d checks failed after the server was back: reconnect backoff not bypassed", extra)
	}
}

// hangingListener accepts connections and never answers.
func hangingListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

func TestCheckTimeoutAgainstHangingServer(t *testing.T) {
	tests := []struct {
		name string
		mut  func(*Config)
	}{
		{"http", func(c *Config) { c.HTTP = &HTTPCheck{Path: "/healthz"} }},
		{"tcp expect", func(c *Config) { c.TCP = &TCPCheck{Send: "PING", Expect: "PONG"} }},
		{"grpc", func(c *Config) { c.GRPC = &GRPCCheck{} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := hangingListener(t)
			cfg := realConfig(tt.mut)
			cfg.Timeout = 50 * time.Millisecond
			c := New(cfg, Options{})
			defer c.Close()
			c.SetHosts([]string{addr})
			eventually(t, "two checks", func() bool { return attempts(c, addr) >= 2 })
			s, _ := c.Status(addr)
			if s.Healthy || !strings.Contains(s.LastError, ErrTimeout.Error()+" after 50ms") {
				t.Fatalf("status %+v, want a timeout", s)
			}
		})
	}
}

func TestRealHostsAddedAndRemoved(t *testing.T) {
	var srvs [2]*httptest.Server
	for i := range srvs {
		srvs[i] = httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		defer srvs[i].Close()
	}
	a, b := srvs[0].Listener.Addr().String(), srvs[1].Listener.Addr().String()
	c := New(realConfig(func(c *Config) { c.HTTP = &HTTPCheck{Path: "/"} }), Options{})
	defer c.Close()

	c.SetHosts([]string{a})
	eventually(t, "a checked 3 times", func() bool { return attempts(c, a) >= 3 })
	before := attempts(c, a)
	c.SetHosts([]string{b, a})
	if got := attempts(c, a); got < before || !c.Healthy(a) {
		t.Fatalf("a lost its state across SetHosts: attempts %d -> %d", before, got)
	}
	eventually(t, "b healthy", func() bool { return c.Healthy(b) })
	c.SetHosts([]string{b})
	if _, ok := c.Status(a); ok || c.Healthy(a) {
		t.Fatal("a still checked after removal")
	}
	if !c.Healthy(b) {
		t.Fatal("b lost its health when a was removed")
	}
}

func TestNewPanicsWithoutCheck(t *testing.T) {
	defer func() {
		if r := recover(); r == nil {
			t.Fatal("New accepted a config without a check")
		}
	}()
	c := New(Config{}, Options{})
	c.Close()
}
