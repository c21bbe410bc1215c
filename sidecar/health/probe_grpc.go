package health

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// grpcProber calls grpc.health.v1.Health/Check on one ClientConn per host
// (plaintext HTTP/2), kept between checks. After a transport failure the
// conn is dropped and the next check dials afresh: a ClientConn in
// TRANSIENT_FAILURE would fail RPCs fast for its whole reconnect backoff
// (up to two minutes), hiding a host that has come back.
type grpcProber struct {
	addr      string
	service   string
	authority string
	conn      *grpc.ClientConn
	client    healthpb.HealthClient
}

func newGRPCProber(addr string, cfg *GRPCCheck, serviceName string) *grpcProber {
	authority := cfg.Authority
	if authority == "" {
		authority = serviceName
	}
	return &grpcProber{addr: addr, service: cfg.ServiceName, authority: authority}
}

func (p *grpcProber) probe(ctx context.Context) result {
	if p.conn == nil {
		opts := []grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithUserAgent(UserAgent),
			grpc.WithNoProxy(),
			grpc.WithDisableServiceConfig(),
			grpc.WithDisableRetry(),
		}
		if p.authority != "" {
			opts = append(opts, grpc.WithAuthority(p.authority))
		}
		// passthrough: the address is already resolved; no DNS round.
		conn, err := grpc.NewClient("passthrough:///"+p.addr, opts...)
		if err != nil {
			return result{verdict: failImmediate, err: fmt.Errorf("health: grpc client for %s: %w", p.addr, err)}
		}
		p.conn, p.client = conn, healthpb.NewHealthClient(conn)
	}
	resp, err := p.client.Check(ctx, &healthpb.HealthCheckRequest{Service: p.service})
	if err != nil {
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Internal:
			// Transport trouble: Envoy's NETWORK failure, counted.
			p.close()
			return result{verdict: failCounted, err: err}
		default:
			// The server answered with an error (e.g. Unimplemented, or
			// NotFound for an unknown service): Envoy's ACTIVE failure.
			return result{verdict: failImmediate, err: err}
		}
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return result{verdict: failImmediate, err: fmt.Errorf("%w: %s", ErrNotServing, s)}
	}
	return result{verdict: pass}
}

func (p *grpcProber) close() {
	if p.conn != nil {
		_ = p.conn.Close()
		p.conn, p.client = nil, nil
	}
}
