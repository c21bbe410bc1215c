package sidecar

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// h2Backend is a grpc-go TestService that counts its calls, answers the
// status asked for, and blocks on "x-block" until its context ends.
type h2Backend struct {
	testpb.UnimplementedTestServiceServer
	addr     string
	calls    atomic.Int64
	canceled chan struct{}
}

func (b *h2Backend) UnaryCall(ctx context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	b.calls.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md["x-block"]) > 0 {
		<-ctx.Done()
		b.canceled <- struct{}{}
		return nil, ctx.Err()
	}
	if st := in.GetResponseStatus(); st != nil && st.Code != 0 {
		return nil, status.Error(codes.Code(st.Code), st.Message)
	}
	return &testpb.SimpleResponse{ServerId: b.addr, Payload: &testpb.Payload{Body: make([]byte, in.ResponseSize)}}, nil
}

func startH2Backend(t *testing.T) *h2Backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &h2Backend{addr: ln.Addr().String(), canceled: make(chan struct{}, 8)}
	srv := grpc.NewServer()
	testpb.RegisterTestServiceServer(srv, b)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return b
}

func grpcTestClient(t *testing.T, addr string) testpb.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

func grpcCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestH2RelayBalancesEveryCall: the calls of one client connection are
// balanced call by call over the endpoints by weight, through the relay's
// upstream pool (one connection per endpoint).
func TestH2RelayBalancesEveryCall(t *testing.T) {
	b1, b2 := startH2Backend(t), startH2Backend(t)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - {service: api, listen: 127.0.0.1:0, protocol: grpc}
`, endpointsYAML("api", b1.addr, 1, b2.addr, 3))
	c := grpcTestClient(t, s.UpstreamAddr("api"))
	ctx := grpcCtx(t)
	for i := 0; i < 40; i++ {
		if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 10}); err != nil {
			t.Fatal(err)
		}
	}
	if b1.calls.Load() != 10 || b2.calls.Load() != 30 {
		t.Fatalf("calls %d and %d, want 10 and 30 (weights 1:3, round robin per call)", b1.calls.Load(), b2.calls.Load())
	}
	s.clMu.RLock()
	cl := s.byName["api"]
	s.clMu.RUnlock()
	pool := s.h2For(cl).Pool()
	if pool.Conns(b1.addr) != 1 || pool.Conns(b2.addr) != 1 {
		t.Fatalf("relay pool holds %d and %d connections, want one per endpoint", pool.Conns(b1.addr), pool.Conns(b2.addr))
	}
}

// TestH2RelayRetryAndLocalReplies: retry_on unavailable retries a
// trailers-only UNAVAILABLE on the other endpoint; the route timeout ends
// a call with DEADLINE_EXCEEDED and cancels it upstream; no endpoint gives
// UNAVAILABLE "no healthy upstream".
func TestH2RelayRetryAndLocalReplies(t *testing.T) {
	b1, b2 := startH2Backend(t), startH2Backend(t)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
upstreams:
  - service: api
    listen: 127.0.0.1:0
    protocol: grpc
    timeout: 300ms
    retry_policy: {retry_on: unavailable, num_retries: 1, retry_back_off: {base_interval: 1ms}}
  - {service: none, listen: 127.0.0.1:0, protocol: grpc}
`, endpointsYAML("api", b1.addr, 1, b2.addr, 1)+"  none: []\n")
	c := grpcTestClient(t, s.UpstreamAddr("api"))
	ctx := grpcCtx(t)

	_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.Unavailable), Message: "down"}})
	if status.Code(err) != codes.Unavailable || b1.calls.Load() != 1 || b2.calls.Load() != 1 {
		t.Fatalf("got %v after %d+%d calls, want UNAVAILABLE after one call on each endpoint (one retry)", err, b1.calls.Load(), b2.calls.Load())
	}
	_, err = c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.NotFound), Message: "nf"}})
	if status.Code(err) != codes.NotFound || b1.calls.Load()+b2.calls.Load() != 3 {
		t.Fatalf("got %v after %d calls, want NOT_FOUND, not retried", err, b1.calls.Load()+b2.calls.Load())
	}

	_, err = c.UnaryCall(metadata.AppendToOutgoingContext(ctx, "x-block", "1"), &testpb.SimpleRequest{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("blocked call: %v, want DEADLINE_EXCEEDED from the 300ms route timeout", err)
	}
	select {
	case <-b1.canceled:
	case <-b2.canceled:
	case <-ctx.Done():
		t.Fatal("the upstream call was not canceled at the timeout")
	}

	_, err = grpcTestClient(t, s.UpstreamAddr("none")).UnaryCall(ctx, &testpb.SimpleRequest{})
	if st, _ := status.FromError(err); st.Code() != codes.Unavailable || st.Message() != "no healthy upstream" {
		t.Fatalf("no endpoint: %v, want UNAVAILABLE no healthy upstream", err)
	}
}

// TestH2RelayDrain: Shutdown sends GOAWAY on the relay's connections and
// lets the call in flight finish.
func TestH2RelayDrain(t *testing.T) {
	b := startH2Backend(t)
	s := startSidecarNoCleanup(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
drain: {timeout: 10s, quiet_period: 0s}
upstreams:
  - {service: api, listen: 127.0.0.1:0, protocol: grpc}
`, endpointsYAML("api", b.addr, 1))
	c := grpcTestClient(t, s.UpstreamAddr("api"))
	ctx := grpcCtx(t)
	if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	// A call in flight (blocked until canceled) when the drain starts: the
	// connection must stay up for it; its own deadline ends it.
	done := make(chan error, 1)
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	go func() {
		_, err := c.UnaryCall(metadata.AppendToOutgoingContext(cctx, "x-block", "1"), &testpb.SimpleRequest{})
		done <- err
	}()
	waitCalls(t, b, 2)
	stopped := make(chan error, 1)
	go func() { stopped <- s.Shutdown(context.Background()) }()
	if err := <-done; status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("call in flight during the drain: %v, want its own DEADLINE_EXCEEDED (not a reset)", err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

func waitCalls(t *testing.T, b *h2Backend, n int64) {
	t.Helper()
	eventually(t, 10*time.Second, "backend calls", func() bool { return b.calls.Load() >= n })
}

// TestTransparentH2ThroughRelay: captured HTTP/2 goes through the frame
// relay: each stream of one client connection goes to the upstream its
// :authority names, balanced per call by weight, on that upstream's pooled
// connections; an unknown authority is answered locally (gRPC UNIMPLEMENTED,
// as a 404) and the connection keeps serving.
func TestTransparentH2ThroughRelay(t *testing.T) {
	a1, a2, w := startH2Backend(t), startH2Backend(t), startH2Backend(t)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
transparent: {listen: 127.0.0.1:0}
upstreams:
  - {service: api, protocol: grpc}
  - {service: web, protocol: grpc}
`, endpointsYAML("api", a1.addr, 1, a2.addr, 3)+"  web:\n    - {address: "+w.addr+", weight: 1}\n")
	cc, err := grpc.NewClient(s.TransparentAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := testpb.NewTestServiceClient(cc)
	ctx := grpcCtx(t)
	for i := 0; i < 40; i++ {
		if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 10}, grpc.CallAuthority("api")); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 10}, grpc.CallAuthority("web.default.svc.cluster.local:8080"))
	if err != nil || resp.GetServerId() != w.addr {
		t.Fatalf("web: %v from %q, want %s", err, resp.GetServerId(), w.addr)
	}
	_, err = c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.CallAuthority("nope"))
	if st, _ := status.FromError(err); st.Code() != codes.Unimplemented {
		t.Fatalf("unknown authority: %v, want Unimplemented (404)", err)
	}
	if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.CallAuthority("api")); err != nil {
		t.Fatalf("after the local reply: %v", err)
	}
	if a1.calls.Load()+a2.calls.Load() != 41 || a1.calls.Load() < 10 || a1.calls.Load() > 11 {
		t.Fatalf("api calls %d and %d, want 10(+1) and 30(+1) (weights 1:3, per call)", a1.calls.Load(), a2.calls.Load())
	}
	for name, addrs := range map[string][]string{"api": {a1.addr, a2.addr}, "web": {w.addr}} {
		s.clMu.RLock()
		cl := s.byName[name]
		s.clMu.RUnlock()
		for _, addr := range addrs {
			if n := s.h2For(cl).Pool().Conns(addr); n != 1 {
				t.Errorf("%s's relay pool holds %d connections to %s, want 1", name, n, addr)
			}
		}
	}
}

// TestH2LocalReplyAtOpenEndsStream: a stream answered as it opens (here
// 431, more header fields than limits.max_headers_count) is ended like any
// other: the upstream's in-flight gauge goes back to zero.
func TestH2LocalReplyAtOpenEndsStream(t *testing.T) {
	b := startH2Backend(t)
	s, _ := startSidecar(t, `
admin: 127.0.0.1:0
discovery: {file: "{{EP}}"}
limits: {max_headers_count: 8}
upstreams:
  - {service: api, listen: 127.0.0.1:0, protocol: grpc}
`, endpointsYAML("api", b.addr, 1))
	c := grpcTestClient(t, s.UpstreamAddr("api"))
	ctx := grpcCtx(t)
	md := metadata.MD{}
	for i := range 12 {
		md.Set(fmt.Sprintf("x-extra-%d", i), "v")
	}
	if _, err := c.UnaryCall(metadata.NewOutgoingContext(ctx, md), &testpb.SimpleRequest{}); status.Code(err) == codes.OK {
		t.Fatal("a call with 12 extra header fields passed max_headers_count 8")
	}
	if b.calls.Load() != 0 {
		t.Fatalf("the backend saw %d calls, want 0", b.calls.Load())
	}
	s.clMu.RLock()
	cl := s.byName["api"]
	s.clMu.RUnlock()
	eventually(t, 10*time.Second, "rq_active back to 0", func() bool { return testutil.ToFloat64(cl.cm.rqActive) == 0 })
	if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("a plain call after the refusal: %v", err)
	}
}
