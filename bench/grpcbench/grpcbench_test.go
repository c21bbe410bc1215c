package main

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/bench/internal/measure"
)

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func startServer(t *testing.T, s *grpc.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

func TestUnary(t *testing.T) {
	cc := dial(t, startServer(t, newServer(100)))
	u := &unaryCall{cc: cc}
	for range 3 {
		if err := u.Do(); err != nil {
			t.Fatal(err)
		}
		if len(u.rsp.Value) != 100 {
			t.Fatalf("answer of %d bytes, want 100", len(u.rsp.Value))
		}
	}
}

func TestUnaryErrors(t *testing.T) {
	// A server without the bench service answers UNIMPLEMENTED: an
	// answer, so a status error.
	u := &unaryCall{cc: dial(t, startServer(t, grpc.NewServer()))}
	if err := u.Do(); !errors.Is(err, measure.ErrStatus) {
		t.Errorf("UNIMPLEMENTED: err = %v, want a status error", err)
	}
	// Nothing listening: UNAVAILABLE, a connection error.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	u = &unaryCall{cc: dial(t, addr)}
	if err := u.Do(); err == nil || errors.Is(err, measure.ErrStatus) {
		t.Errorf("no server: err = %v, want a connection error, not a status error", err)
	}
}

func TestDownload(t *testing.T) {
	addr := startServer(t, newServer(100))
	ccs := []*grpc.ClientConn{dial(t, addr), dial(t, addr)}
	r := download(ccs, 2, 4096, 0, 200*time.Millisecond, &measure.Meter{})
	if r.Errors != 0 || r.Requests == 0 || r.Bytes != r.Requests*4096 {
		t.Errorf("errors %d (last %q), messages %d, bytes %d; want 0, > 0, 4096 per message", r.Errors, r.LastErr, r.Requests, r.Bytes)
	}
}

func TestDownloadChunkBound(t *testing.T) {
	cc := dial(t, startServer(t, newServer(100)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, methodDownload)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SendMsg(wrapperspb.UInt32(8 << 20)); err != nil {
		t.Fatal(err)
	}
	s.CloseSend()
	var m wrapperspb.BytesValue
	if err := s.RecvMsg(&m); err != nil || len(m.Value) != maxChunk {
		t.Errorf("asked for 8 MiB messages: got %d bytes, %v; want %d (the bound)", len(m.Value), err, maxChunk)
	}
}
