package main

import (
	"flag"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
)

// cmdIptables installs or removes the transparent-capture rules: outbound
// TCP from the pod is redirected to the transparent listener, except the
// sidecar's own traffic (by uid) and loopback; optionally inbound TCP to the
// app's ports is redirected to the inbound listener.
func cmdIptables(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "install" && args[0] != "remove") {
		fmt.Fprintln(stderr, "usage: sidemesh iptables install|remove [--proxy-port 15001] [--proxy-uid 1337] [--inbound-port 15006 --inbound-ports 8080,9090] [--exclude-ports 15000] [--dry-run]")
		return 2
	}
	fs := flag.NewFlagSet("iptables", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := captureOptions{}
	fs.IntVar(&o.ProxyPort, "proxy-port", injectCapturePort, "transparent listener port")
	fs.IntVar(&o.ProxyUID, "proxy-uid", injectProxyUID, "uid the sidecar runs as (its traffic is not captured)")
	fs.IntVar(&o.InboundPort, "inbound-port", 15006, "inbound listener port")
	inbound := fs.String("inbound-ports", "", "comma-separated app ports whose inbound traffic goes to the inbound listener")
	exclude := fs.String("exclude-ports", "", "comma-separated outbound destination ports never captured")
	dry := fs.Bool("dry-run", false, "print the commands instead of running them")
	bin := fs.String("iptables", "iptables", "iptables binary")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	var err error
	if o.InboundPorts, err = parsePorts("--inbound-ports", *inbound); err != nil {
		fmt.Fprintln(stderr, "sidemesh iptables:", err)
		return 2
	}
	if o.ExcludePorts, err = parsePorts("--exclude-ports", *exclude); err != nil {
		fmt.Fprintln(stderr, "sidemesh iptables:", err)
		return 2
	}
	var rules [][]string
	if args[0] == "install" {
		rules = installRules(o)
	} else {
		rules = removeRules()
	}
	for _, r := range rules {
		if *dry {
			fmt.Fprintln(stdout, *bin+" "+strings.Join(r, " "))
			continue
		}
		out, err := exec.Command(*bin, r...).CombinedOutput()
		if err != nil && args[0] == "install" {
			fmt.Fprintf(stderr, "sidemesh iptables: %s %s: %v: %s\n", *bin, strings.Join(r, " "), err, out)
			return 1
		}
	}
	return 0
}

type captureOptions struct {
	ProxyPort, ProxyUID, InboundPort int
	InboundPorts, ExcludePorts       []int
}

func parsePorts(flagName, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("%s: %q is not a port", flagName, f)
		}
		out = append(out, p)
	}
	return out, nil
}

func installRules(o captureOptions) [][]string {
	r := [][]string{
		{"-t", "nat", "-N", "SIDEMESH_OUTPUT"},
		{"-t", "nat", "-A", "SIDEMESH_OUTPUT", "-m", "owner", "--uid-owner", strconv.Itoa(o.ProxyUID), "-j", "RETURN"},
		{"-t", "nat", "-A", "SIDEMESH_OUTPUT", "-d", "127.0.0.0/8", "-j", "RETURN"},
	}
	for _, p := range o.ExcludePorts {
		r = append(r, []string{"-t", "nat", "-A", "SIDEMESH_OUTPUT", "-p", "tcp", "--dport", strconv.Itoa(p), "-j", "RETURN"})
	}
	r = append(r,
		[]string{"-t", "nat", "-A", "SIDEMESH_OUTPUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(o.ProxyPort)},
		[]string{"-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "SIDEMESH_OUTPUT"},
	)
	if len(o.InboundPorts) > 0 {
		r = append(r, []string{"-t", "nat", "-N", "SIDEMESH_INBOUND"})
		for _, p := range o.InboundPorts {
			r = append(r, []string{"-t", "nat", "-A", "SIDEMESH_INBOUND", "-p", "tcp", "--dport", strconv.Itoa(p), "-j", "REDIRECT", "--to-ports", strconv.Itoa(o.InboundPort)})
		}
		r = append(r, []string{"-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", "SIDEMESH_INBOUND"})
	}
	return r
}

func removeRules() [][]string {
	return [][]string{
		{"-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", "SIDEMESH_OUTPUT"},
		{"-t", "nat", "-F", "SIDEMESH_OUTPUT"},
		{"-t", "nat", "-X", "SIDEMESH_OUTPUT"},
		{"-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "SIDEMESH_INBOUND"},
		{"-t", "nat", "-F", "SIDEMESH_INBOUND"},
		{"-t", "nat", "-X", "SIDEMESH_INBOUND"},
	}
}
