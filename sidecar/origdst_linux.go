package sidecar

import (
	"net"
	"strconv"
	"syscall"
)

// soOriginalDst is SO_ORIGINAL_DST from linux/netfilter_ipv4.h.
const soOriginalDst = 80

// originalDst returns the destination the client dialled before iptables
// REDIRECT, or the connection's local address when it was not redirected.
func originalDst(c net.Conn) string {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c.LocalAddr().String()
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c.LocalAddr().String()
	}
	var out string
	_ = raw.Control(func(fd uintptr) {
		mreq, err := syscall.GetsockoptIPv6Mreq(int(fd), syscall.SOL_IP, soOriginalDst)
		if err != nil {
			return
		}
		// struct sockaddr_in: family(2) port(2, big endian) addr(4)
		b := mreq.Multiaddr
		port := int(b[2])<<8 | int(b[3])
		ip := net.IPv4(b[4], b[5], b[6], b[7])
		out = net.JoinHostPort(ip.String(), strconv.Itoa(port))
	})
	if out == "" {
		return c.LocalAddr().String()
	}
	return out
}
