package consul

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// ErrNoAddress is returned by DetectAddress when no address other hosts
// could reach was found.
var ErrNoAddress = errors.New("consul: no reachable address detected")

// DetectAddress finds the address this instance should register: the local
// address the kernel would use to reach the Consul agent at agent (host:port,
// optionally with an http:// or https:// scheme), unless that is a loopback
// address; then the first global unicast address of an interface that is up
// (of the agent's address family first); then, for an agent on loopback, the
// loopback address itself (one host, nothing else to reach). It sends no
// packet: a UDP "connect" only asks the kernel for the route.
func DetectAddress(agent string) (netip.Addr, error) {
	hostport, err := splitAddress(agent)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: agent address %q %v", ErrNoAddress, agent, err)
	}
	var routed netip.Addr
	var routeErr error
	if c, err := net.Dial("udp", hostport); err == nil {
		if ua, ok := c.LocalAddr().(*net.UDPAddr); ok {
			routed, _ = netip.AddrFromSlice(ua.IP)
			routed = routed.Unmap()
		}
		c.Close()
	} else {
		routeErr = err
	}
	if routed.IsValid() && !routed.IsLoopback() && !routed.IsUnspecified() {
		return routed, nil
	}
	want6 := routed.IsValid() && routed.Is6()
	if a, ok := firstInterfaceAddr(want6); ok {
		return a, nil
	}
	if a, ok := firstInterfaceAddr(!want6); ok {
		return a, nil
	}
	if routed.IsValid() && routed.IsLoopback() {
		return routed, nil
	}
	if routeErr != nil {
		return netip.Addr{}, fmt.Errorf("%w: no route to the Consul agent at %s (%v) and no non-loopback interface address", ErrNoAddress, hostport, routeErr)
	}
	return netip.Addr{}, fmt.Errorf("%w: no route to the Consul agent at %s and no non-loopback interface address", ErrNoAddress, hostport)
}

// firstInterfaceAddr returns the first global unicast address (IPv6 when
// v6, IPv4 otherwise) of an interface that is up and not loopback.
func firstInterfaceAddr(v6 bool) (netip.Addr, bool) {
	ifs, err := net.Interfaces()
	if err != nil {
		return netip.Addr{}, false
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			pfx, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			ip := pfx.Addr().Unmap()
			if ip.Is6() != v6 || !ip.IsGlobalUnicast() {
				continue
			}
			return ip, true
		}
	}
	return netip.Addr{}, false
}
