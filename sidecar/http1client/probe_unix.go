//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package http1client

import "syscall"

// connIdleOK peeks at an idle connection without blocking: true when there
// is nothing to read (no EOF, no reset, no unsolicited bytes).
func connIdleOK(rc syscall.RawConn) bool {
	var buf [1]byte
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		_, _, rerr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	})
	return err == nil && (rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK)
}
