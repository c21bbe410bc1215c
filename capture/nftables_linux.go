package capture

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Netlink programs the rules through nf_tables netlink, so nothing but this
// process is needed (no nft or iptables binary). It needs CAP_NET_ADMIN in
// the network namespace.
type Netlink struct {
	// NetNSFd, when non-zero, is an open /proc/…/ns/net or /run/netns/…
	// file: the rules go to that namespace instead of the calling thread's.
	NetNSFd int
}

func (n Netlink) conn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if n.NetNSFd != 0 {
		opts = append(opts, nftables.WithNetNSFd(n.NetNSFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: opening netlink: %w", err)
	}
	return c, nil
}

func nftFamily(f Family) nftables.TableFamily {
	if f == IPv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

// Install replaces the sidemesh tables of rs's families with rs, in one
// atomic batch: each table is created if missing, deleted (with whatever it
// held) and rebuilt, so installing twice leaves one rule set.
func (n Netlink) Install(rs Ruleset) error {
	c, err := n.conn()
	if err != nil {
		return err
	}
	for _, t := range rs.Tables {
		nt := &nftables.Table{Name: TableName, Family: nftFamily(t.Family)}
		c.AddTable(nt)
		c.DelTable(nt)
		c.AddTable(nt)
		for _, ch := range t.Chains {
			hook := nftables.ChainHookOutput
			if ch.Hook == Prerouting {
				hook = nftables.ChainHookPrerouting
			}
			accept := nftables.ChainPolicyAccept
			nc := c.AddChain(&nftables.Chain{
				Name:     ch.Hook.String(),
				Table:    nt,
				Type:     nftables.ChainTypeNAT,
				Hooknum:  hook,
				Priority: nftables.ChainPriorityNATDest,
				Policy:   &accept,
			})
			for _, r := range ch.Rules {
				c.AddRule(&nftables.Rule{Table: nt, Chain: nc, Exprs: Exprs(r, t.Family)})
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: installing table %s (families %v): %w", TableName, rs.Families(), err)
	}
	return nil
}

// Remove deletes the sidemesh table of each family; a family whose table is
// absent, or that the kernel does not support, is left as it is.
func (n Netlink) Remove(families []Family) error {
	c, err := n.conn()
	if err != nil {
		return err
	}
	for _, f := range families {
		nt := &nftables.Table{Name: TableName, Family: nftFamily(f)}
		c.AddTable(nt) // so that the delete never fails for a missing table
		c.DelTable(nt)
		if err := c.Flush(); err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
			return fmt.Errorf("nftables: deleting table %s %s: %w", f, TableName, err)
		}
	}
	return nil
}

// Exprs encodes r as nf_tables expressions for a table of family f, the
// way nft encodes the same rule text.
func Exprs(r Rule, f Family) []expr.Any {
	var e []expr.Any
	if r.MatchUID {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(r.UID)},
		)
	}
	if r.Daddr.IsValid() {
		off, n := uint32(16), uint32(4) // struct iphdr daddr
		if f == IPv6 {
			off, n = 24, 16 // struct ipv6hdr daddr
		}
		e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n})
		if !r.Daddr.IsSingleIP() {
			mask := make([]byte, n)
			for i := 0; i < r.Daddr.Bits(); i++ {
				mask[i/8] |= 0x80 >> (i % 8)
			}
			e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)})
		}
		e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: r.Daddr.Masked().Addr().AsSlice()})
	}
	if r.TCP || r.Dport != 0 {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		)
	}
	if r.Dport != 0 {
		e = append(e,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(r.Dport)},
		)
	}
	if r.RedirectTo != 0 {
		return append(e,
			&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(r.RedirectTo)},
			&expr.Redir{RegisterProtoMin: 1, RegisterProtoMax: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
		)
	}
	return append(e, &expr.Verdict{Kind: expr.VerdictReturn})
}
