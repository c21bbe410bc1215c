package capture

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
)

// TableName is the nf_tables table (one per address family) that holds
// every capture rule; install rebuilds it, remove deletes it.
const TableName = "sidemesh"

// Config says what to capture. Ports and uids are validated by Build.
type Config struct {
	ProxyPort    uint16         // transparent listener (outbound capture)
	ProxyUID     uint32         // the sidecar's uid: its own traffic is never captured
	InboundPort  uint16         // inbound listener (inbound capture)
	InboundPorts []uint16       // app ports captured inbound
	InboundAll   bool           // capture every inbound TCP port (minus exclusions and the sidecar's own ports)
	ExcludePorts []uint16       // destination ports never captured, either direction
	ExcludeCIDRs []netip.Prefix // outbound destinations never captured
	ExcludeUIDs  []uint32       // further uids whose outbound traffic is never captured
	IPv6         bool           // also capture IPv6 (an ip6 table beside the ip one)
}

// Family is an nf_tables address family the rules are built for.
type Family uint8

// The families a ruleset has tables for.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// String is the family's name in nft syntax.
func (f Family) String() string {
	if f == IPv6 {
		return "ip6"
	}
	return "ip"
}

// Hook is the netfilter hook a chain is attached to (nat type, priority
// dstnat, -100, like iptables' nat table).
type Hook uint8

// The two hooks capture uses.
const (
	Output     Hook = iota // locally generated traffic: outbound capture
	Prerouting             // arriving traffic: inbound capture
)

// String is the hook's name in nft syntax.
func (h Hook) String() string {
	if h == Prerouting {
		return "prerouting"
	}
	return "output"
}

// Rule matches on every field that is set and then returns (leaves the
// connection alone) or, when RedirectTo is set, redirects it to that local
// port.
type Rule struct {
	MatchUID   bool
	UID        uint32       // meta skuid (the socket owner)
	Daddr      netip.Prefix // destination prefix; zero value: any
	TCP        bool         // meta l4proto tcp (implied by Dport)
	Dport      uint16       // tcp destination port; 0: any
	RedirectTo uint16       // 0: return
}

// Chain is one base chain of a table.
type Chain struct {
	Hook  Hook
	Rules []Rule
}

// Table holds the chains of one family.
type Table struct {
	Family Family
	Chains []Chain
}

// Ruleset is what install programs: one table per family.
type Ruleset struct {
	Tables []Table
}

// Build validates c and returns its ruleset.
func Build(c Config) (Ruleset, error) {
	if c.ProxyPort == 0 {
		return Ruleset{}, fmt.Errorf("--proxy-port: must be set")
	}
	inbound := c.InboundAll || len(c.InboundPorts) > 0
	if inbound && c.InboundPort == 0 {
		return Ruleset{}, fmt.Errorf("--inbound-port: must be set when --inbound-ports is")
	}
	if c.InboundAll && len(c.InboundPorts) > 0 {
		return Ruleset{}, fmt.Errorf("--inbound-ports: * cannot be combined with ports")
	}
	for _, p := range c.InboundPorts {
		switch {
		case p == c.InboundPort:
			return Ruleset{}, fmt.Errorf("--inbound-ports: %d is the inbound listener's own port (--inbound-port)", p)
		case p == c.ProxyPort:
			return Ruleset{}, fmt.Errorf("--inbound-ports: %d is the transparent listener's port (--proxy-port)", p)
		case slices.Contains(c.ExcludePorts, p):
			return Ruleset{}, fmt.Errorf("--inbound-ports: %d is also in --exclude-ports", p)
		}
	}
	uids := []uint32{c.ProxyUID}
	for _, u := range c.ExcludeUIDs {
		if !slices.Contains(uids, u) {
			uids = append(uids, u)
		}
	}
	families := []Family{IPv4}
	if c.IPv6 {
		families = append(families, IPv6)
	}
	var rs Ruleset
	for _, fam := range families {
		out := Chain{Hook: Output}
		for _, u := range uids {
			out.Rules = append(out.Rules, Rule{MatchUID: true, UID: u})
		}
		loopback := netip.MustParsePrefix("127.0.0.0/8")
		if fam == IPv6 {
			loopback = netip.MustParsePrefix("::1/128")
		}
		out.Rules = append(out.Rules, Rule{Daddr: loopback})
		for _, p := range c.ExcludeCIDRs {
			if (fam == IPv6) == p.Addr().Is6() {
				out.Rules = append(out.Rules, Rule{Daddr: p.Masked()})
			}
		}
		for _, p := range c.ExcludePorts {
			out.Rules = append(out.Rules, Rule{TCP: true, Dport: p})
		}
		out.Rules = append(out.Rules, Rule{TCP: true, RedirectTo: c.ProxyPort})
		t := Table{Family: fam, Chains: []Chain{out}}
		if inbound {
			in := Chain{Hook: Prerouting}
			if c.InboundAll {
				// The sidecar's own listeners are reached directly.
				own := []uint16{c.InboundPort}
				if c.ProxyPort != c.InboundPort {
					own = append(own, c.ProxyPort)
				}
				for _, p := range append(own, c.ExcludePorts...) {
					in.Rules = append(in.Rules, Rule{TCP: true, Dport: p})
				}
				in.Rules = append(in.Rules, Rule{TCP: true, RedirectTo: c.InboundPort})
			} else {
				for _, p := range c.InboundPorts {
					in.Rules = append(in.Rules, Rule{TCP: true, Dport: p, RedirectTo: c.InboundPort})
				}
			}
			t.Chains = append(t.Chains, in)
		}
		rs.Tables = append(rs.Tables, t)
	}
	return rs, nil
}

// Families lists the families rs has tables for.
func (rs Ruleset) Families() []Family {
	var out []Family
	for _, t := range rs.Tables {
		out = append(out, t.Family)
	}
	return out
}

// String renders r in nft syntax as it would appear in a table of family f.
func (r Rule) String(f Family) string {
	var parts []string
	if r.MatchUID {
		parts = append(parts, "meta skuid "+strconv.FormatUint(uint64(r.UID), 10))
	}
	if r.Daddr.IsValid() {
		a := r.Daddr.String()
		if r.Daddr.IsSingleIP() {
			a = r.Daddr.Addr().String()
		}
		parts = append(parts, f.String()+" daddr "+a)
	}
	switch {
	case r.Dport != 0:
		parts = append(parts, "tcp dport "+strconv.Itoa(int(r.Dport)))
	case r.TCP:
		parts = append(parts, "meta l4proto tcp")
	}
	if r.RedirectTo != 0 {
		parts = append(parts, "redirect to :"+strconv.Itoa(int(r.RedirectTo)))
	} else {
		parts = append(parts, "return")
	}
	return strings.Join(parts, " ")
}

// Text renders what install does as an nft script: each table is created
// if missing, deleted and rebuilt, in one transaction (`nft -f` applies it
// the same way).
func (rs Ruleset) Text() string {
	var b strings.Builder
	for _, t := range rs.Tables {
		fmt.Fprintf(&b, "add table %s %s\ndelete table %s %s\ntable %s %s {\n", t.Family, TableName, t.Family, TableName, t.Family, TableName)
		for _, c := range t.Chains {
			fmt.Fprintf(&b, "\tchain %s {\n\t\ttype nat hook %s priority dstnat; policy accept;\n", c.Hook, c.Hook)
			for _, r := range c.Rules {
				fmt.Fprintf(&b, "\t\t%s\n", r.String(t.Family))
			}
			b.WriteString("\t}\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// RemoveText renders what remove does for the given families as an nft
// script.
func RemoveText(families []Family) string {
	var b strings.Builder
	for _, f := range families {
		fmt.Fprintf(&b, "add table %s %s\ndelete table %s %s\n", f, TableName, f, TableName)
	}
	return b.String()
}

// ParsePorts parses a comma-separated port list; flag names the option in
// errors. An empty string is no ports.
func ParsePorts(flag, s string) ([]uint16, error) {
	var out []uint16
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := strconv.ParseUint(f, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("%s: %q is not a port", flag, f)
		}
		if !slices.Contains(out, uint16(p)) {
			out = append(out, uint16(p))
		}
	}
	return out, nil
}

// ParseInboundPorts parses --inbound-ports: a port list, or "*" for every
// port.
func ParseInboundPorts(flag, s string) (ports []uint16, all bool, err error) {
	if strings.TrimSpace(s) == "*" {
		return nil, true, nil
	}
	ports, err = ParsePorts(flag, s)
	return ports, false, err
}

// ParseCIDRs parses a comma-separated list of prefixes or single addresses.
func ParseCIDRs(flag, s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		var p netip.Prefix
		var err error
		if strings.Contains(f, "/") {
			p, err = netip.ParsePrefix(f)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(f); err == nil && a.Zone() == "" {
				p = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil || !p.IsValid() {
			return nil, fmt.Errorf("%s: %q is not a CIDR", flag, f)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// ParseUIDs parses a comma-separated list of numeric uids.
func ParseUIDs(flag, s string) ([]uint32, error) {
	var out []uint32
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		u, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a numeric uid", flag, f)
		}
		out = append(out, uint32(u))
	}
	return out, nil
}

// HasIPv6 reports whether the calling thread's network namespace has a
// global-scope IPv6 address on an interface other than lo: a pod that can
// reach anything over IPv6.
func HasIPv6() bool {
	for _, p := range []string{"/proc/thread-self/net/if_inet6", "/proc/net/if_inet6"} {
		if b, err := os.ReadFile(p); err == nil {
			return hasGlobalIPv6(string(b))
		}
	}
	return false
}

// hasGlobalIPv6 reads /proc/net/if_inet6: one address per line, "ADDR
// IFINDEX PREFIXLEN SCOPE FLAGS IFNAME", scope 00 being global.
func hasGlobalIPv6(ifInet6 string) bool {
	for _, line := range strings.Split(ifInet6, "\n") {
		f := strings.Fields(line)
		if len(f) == 6 && f[3] == "00" && f[5] != "lo" {
			return true
		}
	}
	return false
}
