//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package http1client

import "syscall"

// connIdleOK: no non-blocking peek here; a closed connection is found when
// used (and the request retried under net/http's rules).
func connIdleOK(syscall.RawConn) bool { return true }
