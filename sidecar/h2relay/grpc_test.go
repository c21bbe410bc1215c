package h2relay

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// testService is the grpc-go backend of the tests: it echoes, streams the
// sizes asked for, reports its name and answers the statuses asked for.
type testService struct {
	testpb.UnimplementedTestServiceServer
	name     string
	calls    atomic.Int64
	canceled chan string // a handler saw its context end: the method
}

func (s *testService) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	s.calls.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	_ = grpc.SetHeader(ctx, metadata.Pairs("server", s.name))
	_ = grpc.SetTrailer(ctx, metadata.Pairs("trailer-echo", first(md["x-echo"])))
	if v := md["x-block"]; len(v) > 0 {
		<-ctx.Done()
		s.canceled <- "EmptyCall"
		return nil, ctx.Err()
	}
	return &testpb.Empty{}, nil
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func (s *testService) UnaryCall(ctx context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.calls.Add(1)
	if st := in.GetResponseStatus(); st != nil && st.Code != 0 {
		return nil, status.Error(codes.Code(st.Code), st.Message)
	}
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: make([]byte, in.ResponseSize)}, ServerId: s.name}, nil
}

func (s *testService) StreamingOutputCall(in *testpb.StreamingOutputCallRequest, stream testpb.TestService_StreamingOutputCallServer) error {
	s.calls.Add(1)
	for _, p := range in.ResponseParameters {
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.Size)}}); err != nil {
			return err
		}
	}
	if st := in.GetResponseStatus(); st != nil && st.Code != 0 {
		return status.Error(codes.Code(st.Code), st.Message)
	}
	return nil
}

func (s *testService) StreamingInputCall(stream testpb.TestService_StreamingInputCallServer) error {
	s.calls.Add(1)
	total := 0
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)})
		}
		if err != nil {
			return err
		}
		total += len(m.GetPayload().GetBody())
	}
}

func (s *testService) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	s.calls.Add(1)
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			s.canceled <- "FullDuplexCall"
			return err
		}
		for _, p := range m.ResponseParameters {
			if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.Size)}}); err != nil {
				return err
			}
		}
	}
}

// startBackend serves a testService on a loopback port.
func startBackend(t *testing.T, name string) (*testService, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svc := &testService{name: name, canceled: make(chan string, 16)}
	srv := grpc.NewServer()
	testpb.RegisterTestServiceServer(srv, svc)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return svc, ln.Addr().String()
}

// testHandler picks endpoints from a list, round robin per attempt, and
// records what the relay reports.
type testHandler struct {
	addrs   []string
	next    atomic.Int64
	retries int // attempts past the first a stream may make
	// retryStatus retries a response with this grpc-status (0: none).
	retryStatus int
	timeout     time.Duration

	mu     sync.Mutex
	ends   []Result
	closed int
	opened int
	header []Header // what each attempt sent
}

func (h *testHandler) Open(req *Request) (Stream, *Reply) {
	h.mu.Lock()
	h.opened++
	h.mu.Unlock()
	if req.Header.Get("x-goaway") != "" {
		req.GoAway()
	}
	if req.Header.Get("x-deny") != "" {
		// With the stream, as the sidecar's policy does: it must be closed.
		return &testStream{h: h}, &Reply{Status: 200, Header: []hpackField{{Name: "content-type", Value: "application/grpc"}, {Name: "grpc-status", Value: "7"}, {Name: "grpc-message", Value: "denied"}}}
	}
	st := &testStream{h: h}
	if h.timeout > 0 {
		st.deadline = time.Now().Add(h.timeout)
	}
	if v := req.Header.Get("grpc-timeout"); v != "" {
		d, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
		if err != nil || v[len(v)-1] != 'u' && v[len(v)-1] != 'm' && v[len(v)-1] != 'n' {
			panic("test: grpc-timeout " + v)
		}
		unit := map[byte]time.Duration{'u': time.Microsecond, 'm': time.Millisecond, 'n': time.Nanosecond}[v[len(v)-1]]
		if d := time.Now().Add(time.Duration(d) * unit); st.deadline.IsZero() || d.Before(st.deadline) {
			st.deadline = d
		}
	}
	return st, nil
}

type testStream struct {
	h        *testHandler
	deadline time.Time
}

func (s *testStream) Deadline() time.Time { return s.deadline }

func (s *testStream) Attempt(n int, hdr *Header) (Target, *Reply) {
	hdr.Set("x-sidemesh-attempt-count", fmt.Sprint(n+1))
	// The relay enforces the deadline (the client's grpc-timeout); the
	// backend gets none, so its timer never races ours.
	hdr.Del("grpc-timeout")
	s.h.mu.Lock()
	s.h.header = append(s.h.header, append(Header(nil), *hdr...))
	s.h.mu.Unlock()
	i := s.h.next.Add(1) - 1
	return Target{Addr: s.h.addrs[int(i)%len(s.h.addrs)]}, nil
}

func (s *testStream) Retry(n int, r *Result, replayable bool) bool {
	if !replayable || n >= s.h.retries {
		return false
	}
	if r.Status == 0 {
		return r.Unprocessed || r.Connect
	}
	return s.h.retryStatus != 0 && r.GRPCStatus() == s.h.retryStatus
}

func (s *testStream) End(n int, r *Result) {
	s.h.mu.Lock()
	s.h.ends = append(s.h.ends, *r)
	s.h.mu.Unlock()
}

func (s *testStream) Reply(r *Result) *Reply {
	if r.Reset != 0 && !r.Timeout {
		return nil // relay the upstream's reset
	}
	code := "14"
	if r.Timeout {
		code = "4"
	}
	return &Reply{Status: 200, Header: []hpackField{{Name: "content-type", Value: "application/grpc"}, {Name: "grpc-status", Value: code}, {Name: "grpc-message", Value: r.Err.Error()}}}
}

func (s *testStream) Close() {
	s.h.mu.Lock()
	s.h.closed++
	s.h.mu.Unlock()
}

func (h *testHandler) results() []Result {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Result(nil), h.ends...)
}

// resultsOf waits until n attempts have ended (the relay ends an attempt
// once its stream is done, which may be after the client has its answer)
// and returns them.
func (h *testHandler) resultsOf(t *testing.T, n int) []Result {
	t.Helper()
	waitFor(t, func() bool { return len(h.results()) >= n }, fmt.Sprintf("%d attempts ended", n))
	return h.results()
}

// startRelay serves the relay on a loopback port with h.
func startRelay(t testing.TB, cfg Config, h Handler) (string, *Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pool := NewPool(cfg)
	srv := NewServer(pool)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1) // the accept loop: the connections' Adds happen while it runs
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = srv.ServeConn(ctx, c, nil, h)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		cancel()
		pool.Close()
		wg.Wait()
	})
	return ln.Addr().String(), srv
}

func dialGRPC(t *testing.T, addr string, opts ...grpc.DialOption) testpb.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGRPCUnaryHeadersTrailersStatus(t *testing.T) {
	_, addr := startBackend(t, "a")
	h := &testHandler{addrs: []string{addr}}
	relay, _ := startRelay(t, Config{}, h)
	c := dialGRPC(t, relay)
	ctx := testCtx(t)

	var hdr, tlr metadata.MD
	octx := metadata.AppendToOutgoingContext(ctx, "x-echo", "hello")
	if _, err := c.EmptyCall(octx, &testpb.Empty{}, grpc.Header(&hdr), grpc.Trailer(&tlr)); err != nil {
		t.Fatal(err)
	}
	if got := first(hdr["server"]); got != "a" {
		t.Errorf("response header server = %q, want a", got)
	}
	if got := first(tlr["trailer-echo"]); got != "hello" {
		t.Errorf("trailer trailer-echo = %q, want hello (trailers relayed)", got)
	}

	resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 300 << 10, Payload: &testpb.Payload{Body: make([]byte, 200<<10)}})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.GetPayload().GetBody()); n != 300<<10 {
		t.Errorf("response payload %d bytes, want %d", n, 300<<10)
	}

	for _, code := range []codes.Code{codes.NotFound, codes.Internal, codes.Unavailable, codes.PermissionDenied} {
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(code), Message: "m-" + code.String()}})
		if st, _ := status.FromError(err); st.Code() != code || st.Message() != "m-"+code.String() {
			t.Errorf("status %v: got %v", code, err)
		}
	}

	// A local reply (the handler's Open refuses).
	_, err = c.EmptyCall(metadata.AppendToOutgoingContext(ctx, "x-deny", "1"), &testpb.Empty{})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || st.Message() != "denied" {
		t.Errorf("local reply: got %v, want PermissionDenied denied", err)
	}
	// The policy of a stream answered by Open is closed all the same (the
	// sidecar counts, logs and ends spans there).
	waitFor(t, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.closed == h.opened
	}, "every stream closed, the one Open answered included")

	// Every attempt ended, with the grpc-status of its trailers.
	rs := h.results()
	if len(rs) != 6 {
		t.Fatalf("%d attempts ended, want 6", len(rs))
	}
	if g := rs[2].GRPCStatus(); g != int(codes.NotFound) {
		t.Errorf("attempt 3 grpc-status %d, want %d", g, codes.NotFound)
	}
	for i, r := range rs {
		if r.Status != 200 || r.Err != nil {
			t.Errorf("attempt %d: status %d err %v", i, r.Status, r.Err)
		}
	}
	h.mu.Lock()
	if got := h.header[0].Get("x-sidemesh-attempt-count"); got != "1" {
		t.Errorf("upstream header x-sidemesh-attempt-count %q, want 1", got)
	}
	h.mu.Unlock()
}

func TestGRPCStreaming(t *testing.T) {
	_, addr := startBackend(t, "a")
	h := &testHandler{addrs: []string{addr}}
	relay, _ := startRelay(t, Config{}, h)
	c := dialGRPC(t, relay)
	ctx := testCtx(t)

	t.Run("server", func(t *testing.T) {
		var params []*testpb.ResponseParameters
		for i := 0; i < 200; i++ {
			params = append(params, &testpb.ResponseParameters{Size: int32(1 + i*500)})
		}
		s, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: params})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			m, err := s.Recv()
			if err == io.EOF {
				if i != len(params) {
					t.Fatalf("got %d messages, want %d", i, len(params))
				}
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(m.GetPayload().GetBody()) != int(params[i].Size) {
				t.Fatalf("message %d: %d bytes, want %d", i, len(m.GetPayload().GetBody()), params[i].Size)
			}
		}
	})
	t.Run("server-error-after-messages", func(t *testing.T) {
		s, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
			ResponseParameters: []*testpb.ResponseParameters{{Size: 10}, {Size: 20}},
			ResponseStatus:     &testpb.EchoStatus{Code: int32(codes.Aborted), Message: "late"},
		})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			_, err = s.Recv()
			if err != nil {
				break
			}
			n++
		}
		if st, _ := status.FromError(err); n != 2 || st.Code() != codes.Aborted || st.Message() != "late" {
			t.Fatalf("got %d messages then %v, want 2 then Aborted late", n, err)
		}
	})
	t.Run("client", func(t *testing.T) {
		s, err := c.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		for i := 0; i < 100; i++ {
			sz := 1 + i*700
			want += sz
			if err := s.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, sz)}}); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := s.CloseAndRecv()
		if err != nil {
			t.Fatal(err)
		}
		if int(resp.AggregatedPayloadSize) != want {
			t.Fatalf("aggregated %d, want %d", resp.AggregatedPayloadSize, want)
		}
	})
	t.Run("bidi", func(t *testing.T) {
		s, err := c.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 50; i++ {
			sz := int32(i * 1000)
			if err := s.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: sz}}}); err != nil {
				t.Fatal(err)
			}
			m, err := s.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if int32(len(m.GetPayload().GetBody())) != sz {
				t.Fatalf("round %d: %d bytes, want %d", i, len(m.GetPayload().GetBody()), sz)
			}
		}
		if err := s.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != io.EOF {
			t.Fatalf("after CloseSend: %v, want EOF", err)
		}
	})
}

func TestGRPCDeadlineAndCancel(t *testing.T) {
	svc, addr := startBackend(t, "a")
	h := &testHandler{addrs: []string{addr}}
	relay, _ := startRelay(t, Config{}, h)
	c := dialGRPC(t, relay)
	ctx := testCtx(t)

	// The client's deadline: grpc-timeout goes upstream, the backend's
	// context ends, the client sees DEADLINE_EXCEEDED.
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err := c.EmptyCall(metadata.AppendToOutgoingContext(dctx, "x-block", "1"), &testpb.Empty{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("blocked call: %v, want DeadlineExceeded", err)
	}
	select {
	case <-svc.canceled:
	case <-ctx.Done():
		t.Fatal("the backend's handler never saw its context end")
	}

	// Cancellation of a stream reaches the backend.
	sctx, scancel := context.WithCancel(ctx)
	s, err := c.FullDuplexCall(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	scancel()
	select {
	case m := <-svc.canceled:
		if m != "FullDuplexCall" {
			t.Fatalf("canceled %s, want FullDuplexCall", m)
		}
	case <-ctx.Done():
		t.Fatal("the backend's stream never saw the cancellation")
	}
	waitFor(t, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.closed == h.opened
	}, "every stream closed")
	rs := h.results()
	if !rs[len(rs)-1].Canceled {
		t.Errorf("last attempt: %+v, want Canceled", rs[len(rs)-1])
	}

	// The relay's own deadline (the handler's) answers DEADLINE_EXCEEDED.
	h.timeout = 200 * time.Millisecond
	_, err = c.EmptyCall(metadata.AppendToOutgoingContext(ctx, "x-block", "1"), &testpb.Empty{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("relay deadline: %v, want DeadlineExceeded", err)
	}
	select {
	case <-svc.canceled:
	case <-ctx.Done():
		t.Fatalf("the backend never saw the relay's timeout; attempts: %+v", h.results())
	}
}

// waitFor polls cond until it holds (a condition, not a duration: the test
// fails only if it never does within the test's context).
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestGRPCPerCallBalancing(t *testing.T) {
	a, addrA := startBackend(t, "a")
	b, addrB := startBackend(t, "b")
	h := &testHandler{addrs: []string{addrA, addrB}}
	relay, _ := startRelay(t, Config{}, h)
	c := dialGRPC(t, relay) // one downstream connection
	ctx := testCtx(t)
	for i := 0; i < 20; i++ {
		if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if a.calls.Load() != 10 || b.calls.Load() != 10 {
		t.Fatalf("calls a=%d b=%d, want 10 each (every call picks)", a.calls.Load(), b.calls.Load())
	}
}

func TestGRPCRetryOnStatus(t *testing.T) {
	_, addrA := startBackend(t, "a")
	b, addrB := startBackend(t, "b")
	h := &testHandler{addrs: []string{addrA, addrB}, retries: 1, retryStatus: int(codes.Unavailable)}
	relay, _ := startRelay(t, Config{}, h)
	c := dialGRPC(t, relay)
	ctx := testCtx(t)
	// Attempt 1 (a) answers UNAVAILABLE, trailers-only: retried on b,
	// which answers the same (no retry left): the client sees it.
	_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 40<<10)}, ResponseStatus: &testpb.EchoStatus{Code: int32(codes.Unavailable), Message: "x"}})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable", err)
	}
	if b.calls.Load() != 1 {
		t.Fatalf("b got %d calls, want 1 (the retry, with its 40 KiB body replayed)", b.calls.Load())
	}
	rs := h.resultsOf(t, 2)
	if len(rs) != 2 || !rs[0].Retried || rs[1].Retried {
		t.Fatalf("attempts %+v, want the first retried", rs)
	}
}

func TestGRPCConnectFailureRetried(t *testing.T) {
	dead := testenv.RefusedAddr(t)
	_, addr := startBackend(t, "a")
	h := &testHandler{addrs: []string{dead, addr}, retries: 1}
	relay, _ := startRelay(t, Config{}, h)
	c := dialGRPC(t, relay)
	if _, err := c.EmptyCall(testCtx(t), &testpb.Empty{}); err != nil {
		t.Fatal(err)
	}
	rs := h.resultsOf(t, 2)
	if len(rs) != 2 || !rs[0].Connect {
		t.Fatalf("attempts %+v, want a connect failure then success", rs)
	}
	// Without a retry: the handler's reply (UNAVAILABLE).
	h2 := &testHandler{addrs: []string{dead}}
	relay2, _ := startRelay(t, Config{}, h2)
	_, err := dialGRPC(t, relay2).EmptyCall(testCtx(t), &testpb.Empty{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable", err)
	}
}

type hpackField = hpack.HeaderField

// TestGRPCSlowReaderBounded: a grpc-go client reading a 16 MiB server
// stream message by message (its windows fixed at 64 KiB, so BDP probing
// does not open them) never has the relay hold more than a stream window
// of DATA; the upstream waits for the relay instead.
func TestGRPCSlowReaderBounded(t *testing.T) {
	_, addr := startBackend(t, "a")
	const window = 128 << 10
	relay, _ := startRelay(t, Config{StreamWindow: window}, &testHandler{addrs: []string{addr}})
	c := dialGRPC(t, relay, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	base := BufferedBytes()
	var params []*testpb.ResponseParameters
	for i := 0; i < 512; i++ {
		params = append(params, &testpb.ResponseParameters{Size: 32 << 10})
	}
	s, err := c.StreamingOutputCall(testCtx(t), &testpb.StreamingOutputCallRequest{ResponseParameters: params})
	if err != nil {
		t.Fatal(err)
	}
	var maxHeld int64
	n := 0
	for {
		_, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
		if held := BufferedBytes() - base; held > maxHeld {
			maxHeld = held
		}
	}
	if n != len(params) {
		t.Fatalf("%d messages, want %d", n, len(params))
	}
	if maxHeld > window+2*frameSize {
		t.Fatalf("the relay held up to %d bytes of DATA for one stream, want at most its window (%d)", maxHeld, window)
	}
	t.Logf("16 MiB streamed; the relay held at most %d bytes (stream window %d)", maxHeld, window)
}
