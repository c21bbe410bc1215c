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

// configDebounce gathers the events of one edit of the config file (an
// editor's write, rename and chmod) into one reload.
const configDebounce = 100 * time.Millisecond

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
	cfgPath := fs.String("c", "", "config file (YAML); reloaded on SIGHUP, POST /reload and when it changes")
	if code, ok := parseFlags(fs, "sidemesh run -c FILE", args, stdout, stderr); !ok {
		return code
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
	sc, err := sidecar.New(cfg, sidecar.Options{Logger: log, Level: level, ConfigFile: *cfgPath})
	if err != nil {
		fmt.Fprintln(stderr, "sidemesh run:", err)
		return 1
	}
	if err := sc.Start(); err != nil {
		fmt.Fprintln(stderr, "sidemesh run:", err)
		return 1
	}
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	if err := sc.WatchConfigFile(watchCtx, configDebounce); err != nil {
		log.Warn("config file not watched; reload with SIGHUP or POST /reload", "err", err)
	}
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sig)
wait:
	for {
		select {
		case s := <-sig:
			switch s {
			case syscall.SIGHUP:
				log.Info("SIGHUP received; reloading", "file", *cfgPath)
				_ = sc.ReloadFile() // the outcome is logged and counted
			case syscall.SIGUSR1:
				sc.ReopenLogs()
			default:
				log.Info("signal received; draining", "signal", s.String())
				break wait
			}
		case <-sc.Quit():
			log.Info("quitquitquit received; draining")
			break wait
		}
	}
	stopWatch()
	ctx, cancel := context.WithTimeout(context.Background(), sc.DrainTimeout()+10*time.Second)
	defer cancel()
	if err := sc.Shutdown(ctx); err != nil {
		fmt.Fprintln(stderr, "sidemesh run: shutdown:", err)
		return 1
	}
	return 0
}
