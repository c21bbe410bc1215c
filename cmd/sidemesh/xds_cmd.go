package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sidemesh/sidemesh/sidecar"
)

// cmdXDS runs only the xDS server: the config's discovery source feeds it
// and it serves every service the source knows (defaults: settings for
// all, upstreams: per service; listeners are not bound), with an admin
// listener (/ready, /metrics, /config_dump, /clients).
func cmdXDS(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("xds", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", "", "config file (YAML)")
	adminAddr := fs.String("admin", "", "admin address (default: the config's admin, or "+sidecar.DefaultControlPlaneAdmin+" when it is the sidecar default)")
	if code, ok := parseFlags(fs, "sidemesh xds -c FILE", args, stdout, stderr); !ok {
		return code
	}
	if *cfgPath == "" {
		fmt.Fprintln(stderr, "sidemesh xds: -c FILE is required")
		return 2
	}
	cfg, err := sidecar.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "sidemesh xds:", err)
		return 1
	}
	if cfg.XDSServer == nil {
		fmt.Fprintln(stderr, "sidemesh xds: config: xds_server.listen: must be set")
		return 1
	}
	log := newLogger(stderr, cfg.LogLevel)
	cp, err := sidecar.NewControlPlane(cfg, log)
	if err != nil {
		fmt.Fprintln(stderr, "sidemesh xds:", err)
		return 1
	}
	if err := cp.Start(); err != nil {
		fmt.Fprintln(stderr, "sidemesh xds:", err)
		return 1
	}
	admin := *adminAddr
	if admin == "" {
		admin = cfg.Admin.Address
		if admin == sidecar.DefaultAdmin {
			admin = sidecar.DefaultControlPlaneAdmin
		}
	}
	if err := cp.StartAdmin(admin); err != nil {
		cp.Stop(context.Background())
		fmt.Fprintln(stderr, "sidemesh xds:", err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cp.Stop(ctx)
	return 0
}
