package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// runSidecar is the -sidecar measurement: one `sidemesh run` with
// upstreams × endpoints from an endpoints file (loopback addresses nothing
// listens on; no request is sent), and its time to /ready, its RSS at
// ready and 3 s later, and the lines of its /metrics.
func runSidecar(bin string, upstreams, endpoints int) error {
	if endpoints > 254 || upstreams > 254 {
		return fmt.Errorf("-sidecar: at most 254 upstreams of 254 endpoints (127.0.U.E addresses)")
	}
	dir, err := os.MkdirTemp("", "xdsfleet-sidecar")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var eps, cfg strings.Builder
	admin, err := freePort()
	if err != nil {
		return err
	}
	ep := filepath.Join(dir, "endpoints.yaml")
	fmt.Fprintf(&cfg, "node: bench\nlog_level: warn\nadmin: %s\ndiscovery: {file: %s}\nupstreams:\n", admin, ep)
	eps.WriteString("services:\n")
	for u := range upstreams {
		fmt.Fprintf(&eps, "  svc-%02d:\n", u)
		fmt.Fprintf(&cfg, "  - {service: svc-%02d, listen: 127.0.0.1:0}\n", u)
		for e := range endpoints {
			fmt.Fprintf(&eps, "    - {address: 127.0.%d.%d:9, weight: 1}\n", 1+u, 1+e)
		}
	}
	if err := os.WriteFile(ep, []byte(eps.String()), 0o644); err != nil {
		return err
	}
	cfgPath := filepath.Join(dir, "sidemesh.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		return err
	}
	cmd := exec.Command(bin, "run", "-c", cfgPath)
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	hc := &http.Client{Timeout: 5 * time.Second}
	for {
		resp, err := hc.Get("http://" + admin + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Since(start) > 30*time.Second {
			return fmt.Errorf("sidecar not ready after 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ready := time.Since(start)
	_, rssReady, err := procStat(cmd.Process.Pid)
	if err != nil {
		return err
	}
	time.Sleep(3 * time.Second)
	_, rss3s, err := procStat(cmd.Process.Pid)
	if err != nil {
		return err
	}
	resp, err := hc.Get("http://" + admin + "/metrics")
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("sidecar upstreams=%d endpoints=%d ready_s=%.2f rss_kb_ready=%d rss_kb_3s=%d metrics_lines=%d\n",
		upstreams, upstreams*endpoints, ready.Seconds(), rssReady, rss3s, strings.Count(string(body), "\n"))
	fmt.Printf("loadavg=%q (shared machine)\n", strings.TrimSpace(string(load)))
	return nil
}
