package main

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The bench service's method names, as a client calls them.
const (
	methodUnary    = "/sidemesh.bench.Bench/Unary"
	methodDownload = "/sidemesh.bench.Bench/Download"
)

// maxChunk bounds a Download message (grpc-go's default receive limit is
// 4 MiB).
const maxChunk = 1 << 20

// benchServer answers the bench service.
type benchServer struct {
	body []byte // the Unary answer
}

var benchServiceDesc = grpc.ServiceDesc{
	ServiceName: "sidemesh.bench.Bench",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Unary",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var in wrapperspb.BytesValue
			if err := dec(&in); err != nil {
				return nil, err
			}
			return &wrapperspb.BytesValue{Value: srv.(*benchServer).body}, nil
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Download",
		ServerStreams: true,
		Handler: func(_ any, stream grpc.ServerStream) error {
			var in wrapperspb.UInt32Value
			if err := stream.RecvMsg(&in); err != nil {
				return err
			}
			msg := &wrapperspb.BytesValue{Value: make([]byte, min(in.GetValue(), maxChunk))}
			for {
				if err := stream.SendMsg(msg); err != nil {
					return err
				}
			}
		},
	}},
}

// newServer returns a gRPC server of the bench service whose Unary answer
// is size bytes.
func newServer(size int) *grpc.Server {
	s := grpc.NewServer()
	s.RegisterService(&benchServiceDesc, &benchServer{body: make([]byte, size)})
	return s
}
