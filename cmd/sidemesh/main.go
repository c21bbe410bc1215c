package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: sidemesh <command> [flags]

commands:
  run -c FILE        run a sidecar
  xds -c FILE        run only the xDS server
  demo [--keep]      sample backends, a sidecar and a short load; prints the traffic split
  iptables install|remove [flags]   transparent-capture rules
  inject -f IN.yaml  print Kubernetes manifests with the sidecar added
  version            print the version
`

// parseFlags parses a command's flags. --help (or -h) prints the
// command's usage line and flags to stdout: code 0. A bad flag prints its
// error and the usage to stderr: code 2. ok says whether to go on.
func parseFlags(fs *flag.FlagSet, usageLine string, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	fs.SetOutput(stderr)
	fs.Usage = func() {} // printed below, to the right stream
	err := fs.Parse(args)
	if err == nil {
		return 0, true
	}
	w, code := stderr, 2
	if errors.Is(err, flag.ErrHelp) {
		w, code = stdout, 0
	}
	fmt.Fprintf(w, "usage: %s\n\nflags:\n", usageLine)
	fs.SetOutput(w)
	fs.PrintDefaults()
	return code, false
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "xds":
		return cmdXDS(args[1:], stdout, stderr)
	case "demo":
		return cmdDemo(args[1:], stdout, stderr)
	case "iptables":
		return cmdIptables(args[1:], stdout, stderr)
	case "inject":
		return cmdInject(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "sidemesh", versionString())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "sidemesh: unknown command %q\n%s", args[0], usage)
	return 2
}
