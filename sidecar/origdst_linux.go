package sidecar

import (
	"encoding/binary"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h, level SOL_IP)
// and ip6tSoOriginalDst IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/
// ip6_tables.h, level SOL_IPV6): both 80. Both answer for a connection that
// netfilter's NAT redirected (nft redirect, iptables REDIRECT).
const (
	soOriginalDst     = 80
	ip6tSoOriginalDst = 80
)

// originalDst returns the destination the client dialled before netfilter
// redirected the connection, or the connection's local address when it was
// not redirected. IPv4 connections (including IPv4-mapped ones on a
// dual-stack socket) ask SOL_IP, IPv6 ones SOL_IPV6.
func originalDst(c net.Conn) string {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c.LocalAddr().String()
	}
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	raw, err := tc.SyscallConn()
	if err != nil {
		return c.LocalAddr().String()
	}
	var out netip.AddrPort
	_ = raw.Control(func(fd uintptr) {
		if local.Addr().Unmap().Is4() {
			out = originalDst4(int(fd))
			return
		}
		out = originalDst6(int(fd))
	})
	if !out.IsValid() {
		return c.LocalAddr().String()
	}
	return out.String()
}

// originalDst4 reads a struct sockaddr_in through SO_ORIGINAL_DST. The
// kernel copies sizeof(struct sockaddr_in) (16 bytes) into the buffer, as
// large as an ipv6_mreq (20).
func originalDst4(fd int) netip.AddrPort {
	mreq, err := unix.GetsockoptIPv6Mreq(fd, unix.SOL_IP, soOriginalDst)
	if err != nil {
		return netip.AddrPort{}
	}
	// family(2) port(2, big endian) addr(4)
	b := mreq.Multiaddr
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}), uint16(b[2])<<8|uint16(b[3]))
}

// originalDst6 reads a struct sockaddr_in6 (28 bytes) through
// IP6T_SO_ORIGINAL_DST into an ip6_mtuinfo (32 bytes), which begins with one.
func originalDst6(fd int) netip.AddrPort {
	info, err := unix.GetsockoptIPv6MTUInfo(fd, unix.SOL_IPV6, ip6tSoOriginalDst)
	if err != nil {
		return netip.AddrPort{}
	}
	sa := info.Addr
	var port [2]byte // sin6_port is in network byte order in memory
	binary.NativeEndian.PutUint16(port[:], sa.Port)
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), binary.BigEndian.Uint16(port[:]))
}
