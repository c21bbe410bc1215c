// Command xdsfleet is the control-plane fleet benchmark (`make bench-xds`):
// it runs `sidemesh xds` as a child process over an endpoints file of
// -services services, connects -clients simulated sidecars to it from this
// one process (one gRPC connection and one ADS stream each, subscribing
// CDS and EDS of -subscribe services, ACKing every response), and measures:
//
//   - connect_s: until every client has ACKed its first CDS and EDS;
//   - rss_kb_per_client: the server's RSS growth (/proc/PID/status) per
//     connected client;
//   - stack_kb_per_client and heap_live_kb_per_client: the growth of the
//     server's goroutine stacks and of its live heap (as of its last GC,
//     from go_memstats_stack_inuse_bytes and go_gc_heap_live_bytes on its
//     admin /metrics; the live heap is read after the changes, once a GC
//     has run since the clients connected), and goroutines_per_client;
//   - per weight change of one service in the file (-changes of them):
//     the server's CPU seconds (/proc/PID/stat) and the time from the file
//     write to the slowest client's update (the file poll included), and
//     how many CDS and EDS responses the clients received.
//
// With -sidecar it measures a sidecar at mesh scale instead: `sidemesh run`
// with -sidecar-upstreams (50) upstreams of -sidecar-endpoints (200)
// endpoints from a file: the time to /ready, the RSS at ready and 3 s
// later, and the lines of /metrics.
//
// The result is key=value lines on stdout. The machine may be shared: the
// load average is printed with the figures.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	bin := flag.String("bin", "bin/sidemesh", "sidemesh binary")
	clients := flag.Int("clients", 1000, "simulated sidecars")
	services := flag.Int("services", 51, "services in the endpoints file")
	endpoints := flag.Int("endpoints", 4, "endpoints per service")
	subscribe := flag.Int("subscribe", 51, "services each client subscribes to (CDS and EDS)")
	changes := flag.Int("changes", 5, "weight changes of one service to measure")
	conns := flag.Int("conns", 0, "gRPC connections shared by the clients (0: one per client)")
	flag.BoolVar(&compat, "compat", false, "for a sidemesh without the catalog and admin of `sidemesh xds` (a before figure): list the services under upstreams, pass no -admin")
	flag.BoolVar(&useDelta, "delta", true, "delta ADS streams (as sidemesh's client); false: state of the world")
	flag.StringVar(&profileDir, "profile", "", "with admin.pprof on the control plane, save its heap and goroutine profiles to this directory after the changes (go tool pprof DIR/heap.pb.gz)")
	sidecar := flag.Bool("sidecar", false, "instead of the fleet: one `sidemesh run` with -sidecar-upstreams × -sidecar-endpoints from a file (time to ready, RSS, /metrics lines)")
	sidecarUpstreams := flag.Int("sidecar-upstreams", 50, "upstreams of the -sidecar measurement")
	sidecarEndpoints := flag.Int("sidecar-endpoints", 200, "endpoints per upstream of the -sidecar measurement")
	flag.Parse()
	if *sidecar {
		if err := runSidecar(*bin, *sidecarUpstreams, *sidecarEndpoints); err != nil {
			fmt.Fprintln(os.Stderr, "xdsfleet:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*bin, *clients, *services, *endpoints, *subscribe, *changes, *conns); err != nil {
		fmt.Fprintln(os.Stderr, "xdsfleet:", err)
		os.Exit(1)
	}
}

func writeEndpoints(path string, services, endpoints int, weight func(svc int) int) error {
	var b strings.Builder
	b.WriteString("services:\n")
	for s := range services {
		fmt.Fprintf(&b, "  svc-%02d:\n", s)
		for e := range endpoints {
			fmt.Fprintf(&b, "    - {address: 127.0.%d.%d:8080, weight: %d}\n", 1+s, 1+e, weight(s))
		}
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// procStat returns the process's CPU seconds (utime+stime) and RSS in KB.
func procStat(pid int) (cpu float64, rssKB int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	cpu = (ut + st) / 100 // USER_HZ
	st2, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(strings.NewReader(string(st2)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			rssKB, _ = strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
	}
	return cpu, rssKB, nil
}

var useDelta, compat bool

type client struct {
	edsVersion atomic.Pointer[string]
	cds, eds   atomic.Int64
}

func run(bin string, nClients, services, endpoints, subscribe, changes, nConns int) error {
	dir, err := os.MkdirTemp("", "xdsfleet")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ep := filepath.Join(dir, "endpoints.yaml")
	weights := make([]int, services)
	for i := range weights {
		weights[i] = 1
	}
	if err := writeEndpoints(ep, services, endpoints, func(s int) int { return weights[s] }); err != nil {
		return err
	}
	xdsAddr, err := freePort()
	if err != nil {
		return err
	}
	adminAddr, err := freePort()
	if err != nil {
		return err
	}
	cfg := filepath.Join(dir, "cp.yaml")
	doc := fmt.Sprintf("log_level: warn\ndiscovery: {file: %s}\nxds_server: {listen: %s}\n", ep, xdsAddr)
	args := []string{"xds", "-c", cfg, "-admin", adminAddr}
	if profileDir != "" {
		doc += "admin: {pprof: true}\n"
	}
	if compat {
		doc += "upstreams:\n"
		for s := range services {
			doc += fmt.Sprintf("  - {service: svc-%02d}\n", s)
		}
		args = args[:3]
	}
	if err := os.WriteFile(cfg, []byte(doc), 0o644); err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	for start := time.Now(); ; {
		c, err := net.Dial("tcp", xdsAddr)
		if err == nil {
			c.Close()
			break
		}
		if time.Since(start) > 10*time.Second {
			return fmt.Errorf("control plane not listening on %s", xdsAddr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	_, rss0, err := procStat(pid)
	if err != nil {
		return err
	}
	// The runtime figures need a control plane whose /metrics has them.
	rt0, rtErr := map[string]float64(nil), error(nil)
	if !compat {
		rt0, rtErr = runtimeMetrics(adminAddr)
	}

	names := make([]string, 0, subscribe)
	for s := range min(subscribe, services) {
		names = append(names, fmt.Sprintf("svc-%02d", s))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if nConns <= 0 {
		nConns = nClients
	}
	gconns := make([]*grpc.ClientConn, nConns)
	for i := range gconns {
		gconns[i], err = grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithReadBufferSize(4<<10), grpc.WithWriteBufferSize(4<<10))
		if err != nil {
			return err
		}
		defer gconns[i].Close()
	}
	cls := make([]*client, nClients)
	var synced sync.WaitGroup
	var errs atomic.Int64
	var firstErr atomic.Pointer[string]
	t0 := time.Now()
	for i := range cls {
		cl := &client{}
		cls[i] = cl
		synced.Add(1)
		go func() {
			if err := cl.run(ctx, gconns[i%nConns], fmt.Sprintf("sidecar-%d", i), names, &synced); err != nil && ctx.Err() == nil {
				errs.Add(1)
				s := err.Error()
				firstErr.CompareAndSwap(nil, &s)
			}
		}()
	}
	done := make(chan struct{})
	go func() { synced.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(120 * time.Second):
		return fmt.Errorf("clients not synced after 120s (%d errors)", errs.Load())
	}
	connect := time.Since(t0)
	time.Sleep(500 * time.Millisecond)
	_, rss1, err := procStat(pid)
	if err != nil {
		return err
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("clients=%d services=%d subscribe=%d endpoints_per_service=%d delta=%v conns=%d\n", nClients, services, len(names), endpoints, useDelta, nConns)
	fmt.Printf("connect_s=%.2f errors=%d\n", connect.Seconds(), errs.Load())
	if p := firstErr.Load(); p != nil {
		fmt.Printf("first_error=%q\n", *p)
	}
	fmt.Printf("server_rss_kb_idle=%d server_rss_kb_connected=%d rss_kb_per_client=%.1f\n", rss0, rss1, float64(rss1-rss0)/float64(nClients))
	var rt1 map[string]float64
	if rtErr != nil {
		fmt.Printf("runtime_metrics=n/a (%v)\n", rtErr)
	}
	if rt0 != nil {
		if rt1, err = runtimeMetrics(adminAddr); err != nil {
			return err
		}
		perClient := func(k string) float64 { return (rt1[k] - rt0[k]) / float64(nClients) }
		fmt.Printf("goroutines_idle=%.0f goroutines_per_client=%.2f stack_kb_per_client=%.1f\n",
			rt0["go_goroutines"], perClient("go_goroutines"), perClient("go_memstats_stack_inuse_bytes")/1024)
	}

	var cpus, lats []float64
	for k := range changes {
		svc := k % len(names)
		weights[svc]++
		baseCDS, baseEDS := sum(cls, func(c *client) int64 { return c.cds.Load() }), sum(cls, func(c *client) int64 { return c.eds.Load() })
		cpu0, _, _ := procStat(pid)
		wrote := time.Now()
		if err := writeEndpoints(ep, services, endpoints, func(s int) int { return weights[s] }); err != nil {
			return err
		}
		// Wait until every client got one more EDS response.
		for {
			if sum(cls, func(c *client) int64 { return c.eds.Load() }) >= baseEDS+int64(nClients) {
				break
			}
			if time.Since(wrote) > 60*time.Second {
				return fmt.Errorf("change %d: not every client updated after 60s", k)
			}
			time.Sleep(time.Millisecond)
		}
		lat := time.Since(wrote)
		time.Sleep(300 * time.Millisecond) // let the server finish (ACK processing) before reading its CPU
		cpu1, _, _ := procStat(pid)
		cpus, lats = append(cpus, cpu1-cpu0), append(lats, lat.Seconds())
		fmt.Printf("change=%d service=svc-%02d slowest_client_s=%.3f server_cpu_s=%.3f cds_responses=%d eds_responses=%d\n",
			k, svc, lat.Seconds(), cpu1-cpu0,
			sum(cls, func(c *client) int64 { return c.cds.Load() })-baseCDS,
			sum(cls, func(c *client) int64 { return c.eds.Load() })-baseEDS)
	}
	if len(cpus) > 0 {
		total := 0.0
		for _, c := range cpus {
			total += c
		}
		slices.Sort(cpus)
		slices.Sort(lats)
		// The mean as well: the CPU time is read in 10 ms ticks, so with
		// many changes the mean is the steadier figure.
		fmt.Printf("median_server_cpu_s=%.3f mean_server_cpu_s=%.3f max_server_cpu_s=%.3f median_slowest_client_s=%.3f max_slowest_client_s=%.3f\n",
			cpus[len(cpus)/2], total/float64(len(cpus)), cpus[len(cpus)-1], lats[len(lats)/2], lats[len(lats)-1])
	}
	if rt0 != nil {
		rt2, err := runtimeMetrics(adminAddr)
		if err != nil {
			return err
		}
		if rt2["go_gc_cycles_total"] > rt1["go_gc_cycles_total"] {
			fmt.Printf("heap_live_kb_per_client=%.1f (GC cycle %.0f, after the changes)\n",
				(rt2["go_gc_heap_live_bytes"]-rt0["go_gc_heap_live_bytes"])/float64(nClients)/1024, rt2["go_gc_cycles_total"])
		} else {
			fmt.Println("heap_live_kb_per_client=n/a (no GC since the clients connected: run with -changes)")
		}
	}
	if profileDir != "" {
		if err := saveProfiles(adminAddr, profileDir); err != nil {
			return err
		}
	}
	fmt.Printf("loadavg=%q (shared machine)\n", strings.TrimSpace(string(load)))
	return nil
}

// profileDir is -profile.
var profileDir string

// saveProfiles fetches the control plane's heap profile (after a GC, as
// /debug/pprof/heap does with gc=1) and its goroutines into dir.
func saveProfiles(admin, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for file, path := range map[string]string{
		"heap.pb.gz":     "/debug/pprof/heap?gc=1",
		"goroutines.txt": "/debug/pprof/goroutine?debug=1",
	} {
		resp, err := http.Get("http://" + admin + path)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("control plane %s: %s", path, resp.Status)
		}
		if err := os.WriteFile(filepath.Join(dir, file), b, 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("profiles=%s (heap.pb.gz, goroutines.txt)\n", dir)
	return nil
}

// runtimeMetrics reads the go_* lines of the control plane's /metrics.
func runtimeMetrics(admin string) (map[string]float64, error) {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || !strings.HasPrefix(name, "go_") {
			continue
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			out[name] = f
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, k := range []string{"go_goroutines", "go_memstats_stack_inuse_bytes", "go_gc_heap_live_bytes", "go_gc_cycles_total"} {
		if _, ok := out[k]; !ok {
			return nil, fmt.Errorf("control plane /metrics at %s has no %s", admin, k)
		}
	}
	return out, nil
}

func sum(cls []*client, f func(*client) int64) int64 {
	var n int64
	for _, c := range cls {
		n += f(c)
	}
	return n
}

// runDelta is one simulated sidecar over delta ADS: CDS and EDS of
// names, ACKing.
func (cl *client) runDelta(ctx context.Context, conn *grpc.ClientConn, node string, names []string, synced *sync.WaitGroup) error {
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		synced.Done()
		return err
	}
	return cl.serve(synced, func(t string, n *corev3.Node) error {
		return st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: names, Node: n})
	}, func() (string, error) {
		resp, err := st.Recv()
		if err != nil {
			return "", err
		}
		return resp.GetTypeUrl(), st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()})
	}, node)
}

// run is one simulated sidecar: SotW ADS (or delta with -delta), CDS and
// EDS of names, ACKing.
func (cl *client) run(ctx context.Context, conn *grpc.ClientConn, node string, names []string, synced *sync.WaitGroup) error {
	if useDelta {
		return cl.runDelta(ctx, conn, node, names, synced)
	}
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		synced.Done()
		return err
	}
	return cl.serve(synced, func(t string, n *corev3.Node) error {
		return st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: t, ResourceNames: names, Node: n})
	}, func() (string, error) {
		resp, err := st.Recv()
		if err != nil {
			return "", err
		}
		return resp.GetTypeUrl(), st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResourceNames: names,
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
	}, node)
}

// serve subscribes to CDS then EDS (the node in the first request), then
// receives, counts and ACKs responses (recvAck) until the stream ends.
// synced is done once both types have arrived, or when the stream ends
// before that.
func (cl *client) serve(synced *sync.WaitGroup, subscribe func(typeURL string, node *corev3.Node) error,
	recvAck func() (typeURL string, err error), node string) error {
	done := false
	defer func() {
		if !done {
			synced.Done()
		}
	}()
	for i, t := range []string{resource.ClusterType, resource.EndpointType} {
		var n *corev3.Node
		if i == 0 {
			n = &corev3.Node{Id: node}
		}
		if err := subscribe(t, n); err != nil {
			return err
		}
	}
	var gotCDS, gotEDS bool
	for {
		t, err := recvAck()
		switch t {
		case resource.ClusterType:
			cl.cds.Add(1)
			gotCDS = true
		case resource.EndpointType:
			cl.eds.Add(1)
			gotEDS = true
		}
		if err != nil {
			return err
		}
		if !done && gotCDS && gotEDS {
			done = true
			synced.Done()
		}
	}
}
