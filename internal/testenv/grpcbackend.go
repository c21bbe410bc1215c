package testenv

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// GRPCBackend is a gRPC server on 127.0.0.1 (the health service is the
// RPC) that counts the unary calls it serves.
type GRPCBackend struct {
	Addr string
	hits atomic.Int64
}

// Count is the number of unary calls served so far.
func (b *GRPCBackend) Count() int { return int(b.hits.Load()) }

// StartGRPCBackend starts one; it stops when the test ends.
func StartGRPCBackend(t testing.TB) *GRPCBackend {
	t.Helper()
	b := &GRPCBackend{}
	g := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		b.hits.Add(1)
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(g, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.Addr = lis.Addr().String()
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return b
}
