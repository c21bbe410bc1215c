package capture

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestBuildErrors(t *testing.T) {
	base := Config{ProxyPort: 15001, ProxyUID: 1337, InboundPort: 15006}
	for _, c := range []struct {
		name string
		mod  func(*Config)
		err  string
	}{
		{"no proxy port", func(c *Config) { c.ProxyPort = 0 }, "--proxy-port: must be set"},
		{"inbound without listener", func(c *Config) { c.InboundPort, c.InboundPorts = 0, []uint16{8080} }, "--inbound-port: must be set"},
		{"star and ports", func(c *Config) { c.InboundAll, c.InboundPorts = true, []uint16{8080} }, "* cannot be combined"},
		{"inbound listener port", func(c *Config) { c.InboundPorts = []uint16{15006} }, "15006 is the inbound listener's own port"},
		{"proxy port inbound", func(c *Config) { c.InboundPorts = []uint16{15001} }, "15001 is the transparent listener's port"},
		{"captured and excluded", func(c *Config) { c.InboundPorts, c.ExcludePorts = []uint16{8080}, []uint16{8080} }, "8080 is also in --exclude-ports"},
	} {
		cfg := base
		c.mod(&cfg)
		if _, err := Build(cfg); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.err)
		}
	}
}

func TestBuildRules(t *testing.T) {
	rs, err := Build(Config{
		ProxyPort: 15001, ProxyUID: 1337, InboundPort: 15006, InboundPorts: []uint16{8080, 9000},
		ExcludePorts: []uint16{15021},
		ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.4.0/22"), netip.MustParsePrefix("2001:2:0:4::/64")},
		ExcludeUIDs:  []uint32{1337, 0}, // the proxy uid again is not repeated
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Ruleset{Tables: []Table{{Family: IPv4, Chains: []Chain{
		{Hook: Output, Rules: []Rule{
			{MatchUID: true, UID: 1337},
			{MatchUID: true, UID: 0},
			{Daddr: netip.MustParsePrefix("127.0.0.0/8")},
			{Daddr: netip.MustParsePrefix("198.18.4.0/22")},
			{TCP: true, Dport: 15021},
			{TCP: true, RedirectTo: 15001},
		}},
		{Hook: Prerouting, Rules: []Rule{
			{TCP: true, Dport: 8080, RedirectTo: 15006},
			{TCP: true, Dport: 9000, RedirectTo: 15006},
		}},
	}}}}
	if !reflect.DeepEqual(rs, want) {
		t.Fatalf("IPv4 only (IPv6 off, the IPv6 CIDR dropped):\n%+v\nwant\n%+v", rs, want)
	}
	if got := rs.Families(); !reflect.DeepEqual(got, []Family{IPv4}) {
		t.Fatalf("families %v", got)
	}
}

func TestRuleText(t *testing.T) {
	for _, c := range []struct {
		r    Rule
		f    Family
		want string
	}{
		{Rule{MatchUID: true, UID: 1337}, IPv4, "meta skuid 1337 return"},
		{Rule{Daddr: netip.MustParsePrefix("198.18.0.7/32")}, IPv4, "ip daddr 198.18.0.7 return"},
		{Rule{Daddr: netip.MustParsePrefix("2001:2::/48")}, IPv6, "ip6 daddr 2001:2::/48 return"},
		{Rule{TCP: true, Dport: 80}, IPv6, "tcp dport 80 return"},
		{Rule{TCP: true, RedirectTo: 15001}, IPv4, "meta l4proto tcp redirect to :15001"},
		{Rule{TCP: true, Dport: 8080, RedirectTo: 15006}, IPv4, "tcp dport 8080 redirect to :15006"},
	} {
		if got := c.r.String(c.f); got != c.want {
			t.Errorf("%+v in %s: %q, want %q", c.r, c.f, got, c.want)
		}
	}
	if got, want := RemoveText([]Family{IPv4, IPv6}), "add table ip sidemesh\ndelete table ip sidemesh\nadd table ip6 sidemesh\ndelete table ip6 sidemesh\n"; got != want {
		t.Errorf("remove text %q, want %q", got, want)
	}
}

func TestIptablesCommands(t *testing.T) {
	rs, err := Build(Config{ProxyPort: 15001, ProxyUID: 1337, InboundPort: 15006, InboundAll: true, IPv6: true,
		ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("2001:2::/48")}})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, c := range (Iptables{IPv6Bin: "/sbin/ip6tables"}).InstallCommands(rs) {
		if c.Cleanup {
			lines = append(lines, "# "+c.String())
		} else {
			lines = append(lines, c.String())
		}
	}
	got := strings.Join(lines, "\n") + "\n"
	for _, want := range []string{
		"# iptables -t nat -D OUTPUT -p tcp -j SIDEMESH_OUTPUT",
		"# /sbin/ip6tables -t nat -X SIDEMESH_INBOUND",
		"iptables -t nat -A SIDEMESH_OUTPUT -d 127.0.0.0/8 -j RETURN",
		"/sbin/ip6tables -t nat -A SIDEMESH_OUTPUT -d ::1/128 -j RETURN",
		"/sbin/ip6tables -t nat -A SIDEMESH_OUTPUT -d 2001:2::/48 -j RETURN",
		"/sbin/ip6tables -t nat -A SIDEMESH_INBOUND -p tcp --dport 15006 -j RETURN",
		"/sbin/ip6tables -t nat -A SIDEMESH_INBOUND -p tcp -j REDIRECT --to-ports 15006",
		"/sbin/ip6tables -t nat -A PREROUTING -p tcp -j SIDEMESH_INBOUND",
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("commands lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "iptables -t nat -A SIDEMESH_OUTPUT -d 2001:2::/48") {
		t.Errorf("an IPv6 CIDR went to iptables:\n%s", got)
	}
	// The cleanup of an earlier install comes first, so installing twice
	// leaves one rule set.
	installing := false
	for _, l := range lines {
		if !strings.HasPrefix(l, "# ") {
			installing = true
		} else if installing {
			t.Fatalf("cleanup command %q after an install command:\n%s", l, got)
		}
	}
}

func TestParse(t *testing.T) {
	if p, err := ParsePorts("--exclude-ports", " 80, 443,80,"); err != nil || !reflect.DeepEqual(p, []uint16{80, 443}) {
		t.Errorf("ports: %v %v", p, err)
	}
	for _, bad := range []string{"0", "65536", "http", "-1"} {
		if _, err := ParsePorts("--exclude-ports", bad); err == nil || err.Error() != `--exclude-ports: "`+bad+`" is not a port` {
			t.Errorf("port %q: %v", bad, err)
		}
	}
	if _, all, err := ParseInboundPorts("--inbound-ports", " * "); !all || err != nil {
		t.Errorf("*: all=%v err=%v", all, err)
	}
	got, err := ParseCIDRs("--exclude-cidrs", "198.18.0.9/24, 2001:2::5, ::ffff:198.18.3.0/120,198.19.0.1")
	want := []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24"), netip.MustParsePrefix("2001:2::5/128"), netip.MustParsePrefix("198.18.3.0/24"), netip.MustParsePrefix("198.19.0.1/32")}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("cidrs: %v %v, want %v", got, err, want)
	}
	for _, bad := range []string{"198.18.0.0/33", "198.18", "fe80::1%eth0", "host"} {
		if _, err := ParseCIDRs("--exclude-cidrs", bad); err == nil || err.Error() != `--exclude-cidrs: "`+bad+`" is not a CIDR` {
			t.Errorf("cidr %q: %v", bad, err)
		}
	}
	if u, err := ParseUIDs("--exclude-uids", "0,1338"); err != nil || !reflect.DeepEqual(u, []uint32{0, 1338}) {
		t.Errorf("uids: %v %v", u, err)
	}
	if _, err := ParseUIDs("--exclude-uids", "root"); err == nil || err.Error() != `--exclude-uids: "root" is not a numeric uid` {
		t.Errorf("uid root: %v", err)
	}
}

func TestHasGlobalIPv6(t *testing.T) {
	loOnly := "00000000000000000000000000000001 01 80 10 80       lo\nfe800000000000000000000000000001 02 40 20 80     eth0\n"
	if hasGlobalIPv6(loOnly) {
		t.Errorf("::1 and a link-local address count as IPv6 connectivity")
	}
	if !hasGlobalIPv6(loOnly + "20010002000000000000000000000001 02 40 00 80     eth0\n") {
		t.Errorf("2001:2::1 on eth0 does not count")
	}
	if hasGlobalIPv6("") {
		t.Errorf("no addresses count")
	}
}
