package capture

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The expressions are those nft generates for the same rule text (nft
// --debug=netlink); the kernel round trip is checked by
// TestNetlinkCaptureInNamespace.
func TestExprs(t *testing.T) {
	tcp := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
	for _, c := range []struct {
		r    Rule
		f    Family
		want []expr.Any
	}{
		{Rule{MatchUID: true, UID: 1337}, IPv4, []expr.Any{
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(1337)},
			&expr.Verdict{Kind: expr.VerdictReturn},
		}},
		{Rule{Daddr: netip.MustParsePrefix("198.18.4.0/22")}, IPv4, []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{0xff, 0xff, 0xfc, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{198, 18, 4, 0}},
			&expr.Verdict{Kind: expr.VerdictReturn},
		}},
		{Rule{Daddr: netip.MustParsePrefix("2001:2::3/128")}, IPv6, []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: netip.MustParseAddr("2001:2::3").AsSlice()},
			&expr.Verdict{Kind: expr.VerdictReturn},
		}},
		{Rule{TCP: true, Dport: 8080, RedirectTo: 15006}, IPv6, append(append([]expr.Any{}, tcp...),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x1f, 0x90}},
			&expr.Immediate{Register: 1, Data: []byte{0x3a, 0x9e}},
			&expr.Redir{RegisterProtoMin: 1, RegisterProtoMax: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
		)},
	} {
		if got := Exprs(c.r, c.f); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %s, want %s", c.r.String(c.f), fmtExprs(got), fmtExprs(c.want))
		}
	}
}
