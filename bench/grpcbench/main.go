package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sidemesh/sidemesh/bench/internal/measure"
)

func main() {
	var (
		serve   = flag.Bool("serve", false, "run the bench server on -addr")
		addr    = flag.String("addr", "", "server (or proxy) host:port; with -serve, the address to listen on")
		size    = flag.Int("size", 100, "server: bytes of each Unary answer")
		mode    = flag.String("mode", "closed", "client: closed (unary throughput), open (unary at -rate) or stream (Download MB/s)")
		conns   = flag.Int("c", 8, "client connections")
		streams = flag.Int("m", 16, "workers (calls in flight, or Download streams) per connection")
		rate    = flag.Float64("rate", 2000, "open: calls per second")
		queue   = flag.Int("queue", 1000, "open: max calls waiting for a free worker; beyond it calls are dropped")
		maxLag  = flag.Duration("max-lag", 5*time.Millisecond, "open: slots the scheduler reaches later than this are skipped and counted, not sent in a burst")
		chunk   = flag.Int("chunk", 64<<10, "stream: bytes per Download message")
		dur     = flag.Duration("d", 5*time.Second, "measured duration")
		warmup  = flag.Duration("warmup", time.Second, "unmeasured warm-up before the window")
		pids    = flag.String("pids", "", "comma-separated PIDs (the proxy) whose CPU time and RSS to report")
		auxPids = flag.String("aux-pids", "", "comma-separated PIDs on the load side (the server); their CPU plus this client's is reported as load_cores")
		clkTck  = flag.Int("clk-tck", 100, "clock ticks per second for /proc/PID/stat (getconf CLK_TCK)")
		label   = flag.String("label", "", "label echoed in the output")
		probe   = flag.Bool("probe", false, "make one Unary call; exit 0 if it succeeds")
	)
	flag.Parse()
	if *addr == "" {
		fatal(errors.New("-addr is required"))
	}
	if *serve {
		if *size < 0 {
			fatal(fmt.Errorf("-size %d: must not be negative", *size))
		}
		ln, err := net.Listen("tcp", *addr)
		if err != nil {
			fatal(err)
		}
		fmt.Printf("grpcbench listening on %s\n", ln.Addr())
		fatal(newServer(*size).Serve(ln))
	}
	if *conns < 1 || *streams < 1 || *dur <= 0 {
		fatal(errors.New("-c, -m and -d must be above 0"))
	}
	if *mode == "open" && (*rate <= 0 || *queue < 1) {
		fatal(errors.New("-rate and -queue must be above 0"))
	}
	if *mode == "stream" && (*chunk < 1 || *chunk > maxChunk) {
		fatal(fmt.Errorf("-chunk %d: want 1 to %d", *chunk, maxChunk))
	}
	proxy, err := measure.ParsePids("-pids", *pids)
	if err != nil {
		fatal(err)
	}
	aux, err := measure.ParsePids("-aux-pids", *auxPids)
	if err != nil {
		fatal(err)
	}
	m := &measure.Meter{Pids: proxy, Aux: append(aux, os.Getpid()), ClkTck: *clkTck}

	if *probe {
		*conns = 1
	}
	ccs := make([]*grpc.ClientConn, *conns)
	for i := range ccs {
		// passthrough: one connection to exactly this address, no
		// resolver in between.
		cc, err := grpc.NewClient("passthrough:///"+*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fatal(err)
		}
		defer cc.Close()
		ccs[i] = cc
	}
	if *probe {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := ccs[0].Invoke(ctx, methodUnary, &wrapperspb.BytesValue{}, new(wrapperspb.BytesValue)); err != nil {
			fatal(err)
		}
		return
	}

	n := *conns * *streams
	newCall := func(i int) measure.Doer { return &unaryCall{cc: ccs[i%len(ccs)]} }
	var res measure.Result
	switch *mode {
	case "closed":
		res = measure.Closed(n, newCall, *warmup, *dur, m)
	case "open":
		res = measure.Open(n, newCall, *rate, *queue, *maxLag, *warmup, *dur, m)
	case "stream":
		res = download(ccs, *streams, uint32(*chunk), *warmup, *dur, m)
	default:
		fatal(fmt.Errorf("-mode %q: want closed, open or stream", *mode))
	}
	res.Label, res.Mode, res.Conns = *label, *mode, *conns
	res.Print(os.Stdout)
	if res.LastErr != "" {
		fmt.Fprintf(os.Stderr, "grpcbench %s: %d errors, last: %s\n", res.Label, res.Errors, res.LastErr)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "grpcbench:", err)
	os.Exit(1)
}

// unaryCall is one worker's Unary call.
type unaryCall struct {
	cc  *grpc.ClientConn
	req wrapperspb.BytesValue
	rsp wrapperspb.BytesValue
}

// Do makes one call. A status other than OK and UNAVAILABLE (the
// connection is down: pause before the next) is an answer that is not a
// success.
func (u *unaryCall) Do() error {
	err := u.cc.Invoke(context.Background(), methodUnary, &u.req, &u.rsp)
	if err != nil && status.Code(err) != codes.Unavailable {
		return fmt.Errorf("%w: %v", measure.ErrStatus, err)
	}
	return err
}

// Close leaves the shared connection open.
func (u *unaryCall) Close() {}

// download runs perConn Download streams on every connection, each
// reading messages as fast as they come, and counts the messages and
// payload bytes received in the measured window. A stream that fails is
// counted as an error and reopened after 10 ms.
func download(ccs []*grpc.ClientConn, perConn int, chunk uint32, warmup, dur time.Duration, m *measure.Meter) measure.Result {
	var (
		measuring         atomic.Bool
		msgs, errs, bytes atomic.Uint64
		lastErr           atomic.Value
		wg                sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(context.Background())
	desc := &grpc.StreamDesc{StreamName: "Download", ServerStreams: true}
	for _, cc := range ccs {
		for range perConn {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var msg wrapperspb.BytesValue
				for ctx.Err() == nil {
					err := func() error {
						s, err := cc.NewStream(ctx, desc, methodDownload)
						if err != nil {
							return err
						}
						if err := s.SendMsg(wrapperspb.UInt32(chunk)); err != nil {
							return err
						}
						if err := s.CloseSend(); err != nil {
							return err
						}
						for {
							if err := s.RecvMsg(&msg); err != nil {
								return err
							}
							if measuring.Load() {
								msgs.Add(1)
								bytes.Add(uint64(len(msg.Value)))
							}
						}
					}()
					if ctx.Err() != nil {
						return
					}
					errs.Add(1)
					lastErr.Store(err.Error())
					time.Sleep(10 * time.Millisecond)
				}
			}()
		}
	}
	// The counters only move while measuring, so the window's differences
	// are exactly what arrived inside it.
	count := func() (uint64, uint64, uint64) { return msgs.Load(), errs.Load(), bytes.Load() }
	r := measure.Window(count, &measuring, warmup, dur, m)
	cancel()
	wg.Wait()
	if e, ok := lastErr.Load().(string); ok {
		r.LastErr = e
	}
	return r
}
