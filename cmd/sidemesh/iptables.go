package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/sidemesh/sidemesh/capture"
)

// cmdIptables installs or removes the transparent-capture rules (package
// capture): outbound TCP from the pod is redirected to the transparent
// listener, except the sidecar's own traffic (by uid), loopback and the
// exclusions; optionally inbound TCP to the app's ports is redirected to the
// inbound listener. The default backend programs nf_tables through netlink,
// so no binary is needed; --backend iptables runs iptables/ip6tables.
func cmdIptables(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("iptables", flag.ContinueOnError)
	backend := fs.String("backend", "nftables", "nftables (netlink, no binary needed) or iptables (runs the iptables/ip6tables binaries)")
	proxyPort := fs.Uint("proxy-port", injectCapturePort, "transparent listener port")
	proxyUID := fs.Uint("proxy-uid", injectProxyUID, "uid the sidecar runs as (its traffic is not captured)")
	inboundPort := fs.Uint("inbound-port", injectInboundPort, "inbound listener port")
	inbound := fs.String("inbound-ports", "", "comma-separated app ports whose inbound traffic goes to the inbound listener, or * for all")
	exclude := fs.String("exclude-ports", "", "comma-separated destination ports never captured (outbound and inbound)")
	excludeCIDRs := fs.String("exclude-cidrs", "", "comma-separated outbound destination CIDRs never captured")
	excludeUIDs := fs.String("exclude-uids", "", "comma-separated uids whose outbound traffic is never captured (besides --proxy-uid)")
	ipv6 := fs.String("ipv6", "auto", "capture IPv6 too: auto (when the network namespace has IPv6), on, off")
	dry := fs.Bool("dry-run", false, "print the rules (nft syntax, or the iptables commands) instead of applying them")
	bin := fs.String("iptables", "iptables", "iptables binary (--backend iptables)")
	bin6 := fs.String("ip6tables", "ip6tables", "ip6tables binary (--backend iptables)")
	const usageLine = "sidemesh iptables install|remove [flags]"
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		code, _ := parseFlags(fs, usageLine, args[:1], stdout, stderr)
		return code
	}
	if len(args) == 0 || (args[0] != "install" && args[0] != "remove") {
		fmt.Fprintln(stderr, "usage: sidemesh iptables install|remove [--backend nftables|iptables] [--proxy-port 15001] [--proxy-uid 1337] [--inbound-port 15006 --inbound-ports 8080,9090|*] [--exclude-ports 15021] [--exclude-cidrs 198.18.0.0/15] [--exclude-uids 0] [--ipv6 auto|on|off] [--dry-run]")
		return 2
	}
	if code, ok := parseFlags(fs, usageLine, args[1:], stdout, stderr); !ok {
		return code
	}
	usageErr := func(err error) int {
		fmt.Fprintln(stderr, "sidemesh iptables:", err)
		return 2
	}
	if fs.NArg() > 0 {
		return usageErr(fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	if *backend != "nftables" && *backend != "iptables" {
		return usageErr(fmt.Errorf("--backend: %q is neither nftables nor iptables", *backend))
	}
	c := capture.Config{ProxyPort: uint16(*proxyPort), ProxyUID: uint32(*proxyUID), InboundPort: uint16(*inboundPort)}
	for _, p := range []struct {
		flag string
		v    uint
	}{{"--proxy-port", *proxyPort}, {"--inbound-port", *inboundPort}} {
		if p.v == 0 || p.v > 65535 {
			return usageErr(fmt.Errorf("%s: %d is not a port", p.flag, p.v))
		}
	}
	if *proxyUID > 1<<32-1 {
		return usageErr(fmt.Errorf("--proxy-uid: %d is not a uid", *proxyUID))
	}
	var err error
	if c.InboundPorts, c.InboundAll, err = capture.ParseInboundPorts("--inbound-ports", *inbound); err != nil {
		return usageErr(err)
	}
	if c.ExcludePorts, err = capture.ParsePorts("--exclude-ports", *exclude); err != nil {
		return usageErr(err)
	}
	if c.ExcludeCIDRs, err = capture.ParseCIDRs("--exclude-cidrs", *excludeCIDRs); err != nil {
		return usageErr(err)
	}
	if c.ExcludeUIDs, err = capture.ParseUIDs("--exclude-uids", *excludeUIDs); err != nil {
		return usageErr(err)
	}
	switch *ipv6 {
	case "on":
		c.IPv6 = true
	case "off":
	case "auto":
		c.IPv6 = capture.HasIPv6()
	default:
		return usageErr(fmt.Errorf("--ipv6: %q is not auto, on or off", *ipv6))
	}
	rs, err := capture.Build(c)
	if err != nil {
		return usageErr(err)
	}

	if *backend == "iptables" {
		ipt := capture.Iptables{IPv4Bin: *bin, IPv6Bin: *bin6}
		cmds := ipt.RemoveCommands([]capture.Family{capture.IPv4, capture.IPv6})
		if args[0] == "install" {
			cmds = ipt.InstallCommands(rs)
		}
		if *dry {
			for _, c := range cmds {
				fmt.Fprintln(stdout, c)
			}
			return 0
		}
		if err := capture.Run(cmds); err != nil {
			fmt.Fprintln(stderr, "sidemesh iptables:", err)
			return 1
		}
		return 0
	}

	nl := capture.Netlink{}
	if args[0] == "remove" {
		// Remove both families whatever --ipv6 says, so nothing is left.
		families := []capture.Family{capture.IPv4, capture.IPv6}
		if *dry {
			fmt.Fprint(stdout, capture.RemoveText(families))
			return 0
		}
		err = nl.Remove(families)
	} else {
		if *dry {
			fmt.Fprint(stdout, rs.Text())
			return 0
		}
		err = nl.Install(rs)
		if err == nil && !c.IPv6 {
			err = nl.Remove([]capture.Family{capture.IPv6}) // an earlier install's
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "sidemesh iptables:", err)
		return 1
	}
	return 0
}
