package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/sidemesh/sidemesh/sidecar"
)

// cmdDemo runs the embedded demo: three backends weighted 1:3:6, static
// discovery, one sidecar, a short load, and the observed split.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keep := fs.Bool("keep", false, "keep running after the load and print the admin URLs")
	n := fs.Int("requests", 3000, "requests to send")
	policy := fs.String("lb", "round_robin", "lb_policy for the demo upstream")
	adminAddr := fs.String("admin", "127.0.0.1:0", "the demo sidecar's admin address (default: a free port)")
	listen := fs.String("listen", "127.0.0.1:0", "the demo upstream's listener (default: a free port)")
	if code, ok := parseFlags(fs, "sidemesh demo [--keep] [flags]", args, stdout, stderr); !ok {
		return code
	}
	if err := demo(stdout, stderr, demoOptions{keep: *keep, n: *n, policy: *policy, admin: *adminAddr, listen: *listen}); err != nil {
		fmt.Fprintln(stderr, "sidemesh demo:", err)
		return 1
	}
	return 0
}

type demoBackend struct {
	name   string
	weight int
	addr   string
	srv    *http.Server
}

type demoOptions struct {
	keep          bool
	n             int
	policy        string
	admin, listen string
}

func demo(stdout, stderr io.Writer, o demoOptions) error {
	keep, n, policy := o.keep, o.n, o.policy
	weights := []int{1, 3, 6}
	var backends []*demoBackend
	for i, w := range weights {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		name := fmt.Sprintf("backend-%d", i+1)
		b := &demoBackend{name: name, weight: w, addr: ln.Addr().String()}
		b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Backend", name)
			fmt.Fprintf(w, "hello from %s\n", name)
		})}
		go b.srv.Serve(ln)
		defer b.srv.Close()
		backends = append(backends, b)
	}
	dir, err := os.MkdirTemp("", "sidemesh-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	epFile := filepath.Join(dir, "endpoints.yaml")
	eps := "services:\n  demo:\n"
	for _, b := range backends {
		eps += fmt.Sprintf("    - {address: %s, weight: %d}\n", b.addr, b.weight)
	}
	if err := os.WriteFile(epFile, []byte(eps), 0o644); err != nil {
		return err
	}
	// The control plane: a sidecar whose file discovery feeds its embedded
	// xDS server. The demo sidecar learns the endpoints over xDS from it.
	cpCfg, err := sidecar.Parse("control-plane.yaml", []byte(fmt.Sprintf(`node: demo-control-plane
admin: 127.0.0.1:0
discovery:
  file: %s
xds_server: {listen: 127.0.0.1:0}
upstreams:
  - service: demo
    lb_policy: %s
`, epFile, policy)))
	if err != nil {
		return err
	}
	quiet := newLogger(io.Discard, "error")
	cp, err := sidecar.New(cpCfg, sidecar.Options{Logger: quiet})
	if err != nil {
		return err
	}
	if err := cp.Start(); err != nil {
		return err
	}
	defer cp.Shutdown(context.Background())

	admin, listen := o.admin, o.listen
	cfgText := fmt.Sprintf(`node: demo-1
drain: {inbound_grace: 0s, quiet_period: 0s}
admin: %s
discovery:
  xds: {address: %s}
upstreams:
  - service: demo
    listen: %s
`, admin, cp.XDSAddr(), listen)
	cfg, err := sidecar.Parse("demo.yaml", []byte(cfgText))
	if err != nil {
		return err
	}
	sc, err := sidecar.New(cfg, sidecar.Options{Logger: quiet})
	if err != nil {
		return err
	}
	if err := sc.Start(); err != nil {
		return err
	}
	defer sc.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sc.WaitReady(ctx); err != nil {
		return fmt.Errorf("sidecar not ready: %w", err)
	}
	// The lb_policy arrives with the cluster over CDS; wait for it too.
	for !sc.Cluster("demo").XDSApplied() || sc.Cluster("demo").Status().LBPolicy != policy {
		if ctx.Err() != nil {
			return fmt.Errorf("cluster settings did not arrive over xDS")
		}
		time.Sleep(10 * time.Millisecond)
	}
	url := "http://" + sc.UpstreamAddr("demo") + "/"
	fmt.Fprintf(stdout, "sidemesh demo: 3 backends weighted 1:3:6 in an endpoints file, served by an embedded xDS server (%s)\nto a sidecar; lb_policy %s; %d requests through %s\n\n", cp.XDSAddr(), policy, n, url)

	counts := map[string]int{}
	var mu sync.Mutex
	var failed int
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: 5 * time.Second}
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				resp, err := client.Get(url)
				mu.Lock()
				if err != nil || resp.StatusCode != 200 {
					failed++
				} else {
					counts[resp.Header.Get("X-Backend")]++
				}
				mu.Unlock()
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)

	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "endpoint\tweight\texpected P_i\tobserved\trequests\t")
	total := 0
	for _, w := range weights {
		total += w
	}
	sort.Slice(backends, func(i, j int) bool { return backends[i].weight < backends[j].weight })
	for _, b := range backends {
		p := float64(b.weight) / float64(total)
		o := float64(counts[b.name]) / float64(n)
		fmt.Fprintf(tw, "%s (%s)\t%d\t%.3f\t%.3f\t%d\t\n", b.name, b.addr, b.weight, p, o, counts[b.name])
	}
	tw.Flush()
	fmt.Fprintf(stdout, "\n%d requests in %v (%.0f req/s), %d failed\n", n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), failed)
	if failed > 0 {
		return fmt.Errorf("%d requests failed", failed)
	}
	if keep {
		a := sc.AdminAddr()
		fmt.Fprintf(stdout, "\nkept running (Ctrl-C to stop):\n  upstream   %s\n  ready      http://%s/ready\n  clusters   http://%s/clusters\n  config     http://%s/config_dump\n  metrics    http://%s/metrics\n", url, a, a, a, a)
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		select {
		case <-sig:
		case <-sc.Quit():
		}
	}
	return nil
}
