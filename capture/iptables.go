package capture

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// Iptables runs the iptables (IPv4) and ip6tables (IPv6) binaries: the
// backend for hosts where the netlink backend cannot be used.
type Iptables struct {
	IPv4Bin, IPv6Bin string // default iptables, ip6tables
}

// Command is one binary invocation. Cleanup commands undo an earlier
// install and may fail (nothing to undo).
type Command struct {
	Args    []string // Args[0] is the binary
	Cleanup bool
}

// String renders the command line.
func (c Command) String() string { return strings.Join(c.Args, " ") }

func chainName(h Hook) string {
	if h == Prerouting {
		return "SIDEMESH_INBOUND"
	}
	return "SIDEMESH_OUTPUT"
}

func (b Iptables) bin(f Family) string {
	if f == IPv6 {
		if b.IPv6Bin != "" {
			return b.IPv6Bin
		}
		return "ip6tables"
	}
	if b.IPv4Bin != "" {
		return b.IPv4Bin
	}
	return "iptables"
}

// RemoveCommands are the commands that delete the capture chains of the
// given families.
func (b Iptables) RemoveCommands(families []Family) []Command {
	var out []Command
	for _, f := range families {
		bin := b.bin(f)
		for _, h := range []Hook{Output, Prerouting} {
			ch := chainName(h)
			out = append(out,
				Command{Args: []string{bin, "-t", "nat", "-D", strings.ToUpper(h.String()), "-p", "tcp", "-j", ch}, Cleanup: true},
				Command{Args: []string{bin, "-t", "nat", "-F", ch}, Cleanup: true},
				Command{Args: []string{bin, "-t", "nat", "-X", ch}, Cleanup: true},
			)
		}
	}
	return out
}

// InstallCommands are the commands that install rs: first the removal of
// an earlier install of either family (so installing twice leaves one rule
// set), then one chain per hook jumped to from the nat table's built-in
// chain.
func (b Iptables) InstallCommands(rs Ruleset) []Command {
	out := b.RemoveCommands([]Family{IPv4, IPv6})
	for _, t := range rs.Tables {
		bin := b.bin(t.Family)
		for _, c := range t.Chains {
			ch := chainName(c.Hook)
			out = append(out, Command{Args: []string{bin, "-t", "nat", "-N", ch}})
			for _, r := range c.Rules {
				args := []string{bin, "-t", "nat", "-A", ch}
				if r.MatchUID {
					args = append(args, "-m", "owner", "--uid-owner", strconv.FormatUint(uint64(r.UID), 10))
				}
				if r.Daddr.IsValid() {
					args = append(args, "-d", r.Daddr.String())
				}
				if r.TCP || r.Dport != 0 {
					args = append(args, "-p", "tcp")
				}
				if r.Dport != 0 {
					args = append(args, "--dport", strconv.Itoa(int(r.Dport)))
				}
				if r.RedirectTo != 0 {
					args = append(args, "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(r.RedirectTo)))
				} else {
					args = append(args, "-j", "RETURN")
				}
				out = append(out, Command{Args: args})
			}
			out = append(out, Command{Args: []string{bin, "-t", "nat", "-A", strings.ToUpper(c.Hook.String()), "-p", "tcp", "-j", ch}})
		}
	}
	return out
}

// Run executes cmds in order; a failing cleanup command is ignored, any
// other failure stops and is returned with the command and its output.
func Run(cmds []Command) error {
	for _, c := range cmds {
		out, err := exec.Command(c.Args[0], c.Args[1:]...).CombinedOutput()
		if err != nil && !c.Cleanup {
			return fmt.Errorf("%s: %v: %s", c, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}
