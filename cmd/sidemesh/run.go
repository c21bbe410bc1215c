package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sidemesh/sidemesh/sidecar"
)

func versionString() string { return sidecar.Version }

func newLogger(w io.Writer, level string) *slog.Logger {
	log, _ := newLevelLogger(w, level)
	return log
}

// newLevelLogger is newLogger on a level that can change at runtime
// (admin's POST /logging).
func newLevelLogger(w io.Writer, level string) (*slog.Logger, *slog.LevelVar) {
	lv := new(slog.LevelVar)
	switch strings.ToLower(level) {
	case "debug":
		lv.Set(slog.LevelDebug)
	case "warn":
		lv.Set(slog.LevelWarn)
	case "error":
		lv.Set(slog.LevelError)
	default:
		lv.Set(slog.LevelInfo)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lv})), lv
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", "", "config file (YAML)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *cfgPath == "" {
		fmt.Fprintln(stderr, "sidemesh run: -c FILE is required")
		return 2
	}
	cfg, err := sidecar.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "sidemesh run:", err)
		return 1
	}
	log, level := newLevelLogger(stderr, cfg.LogLevel)
	sc, err := sidecar.New(cfg, sidecar.Options{Logger: log, Level: level})
	if err != nil {
		fmt.Fprintln(stderr, "sidemesh run:", err)
		return 1
	}
	if err := sc.Start(); err != nil {
		fmt.Fprintln(stderr, "sidemesh run:", err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sig:
		log.Info("signal received; shutting down", "signal", s.String())
	case <-sc.Quit():
		log.Info("quitquitquit received; shutting down")
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Drain.Timeout+10*time.Second)
	defer cancel()
	if err := sc.Shutdown(ctx); err != nil {
		fmt.Fprintln(stderr, "sidemesh run: shutdown:", err)
		return 1
	}
	return 0
}
