//go:build !linux

package sidecar

import "net"

// originalDst: transparent capture is Linux-only; elsewhere the local address.
func originalDst(c net.Conn) string { return c.LocalAddr().String() }
