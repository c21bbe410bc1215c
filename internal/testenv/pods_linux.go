package testenv

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// podsSupported reports why pods cannot be made on this OS (never, here).
func podsSupported() error { return nil }

// inNetns runs f on an OS thread moved into the named network namespace;
// sockets f creates stay in it. The thread is moved back afterwards, or, if
// that fails, left locked so it dies with the goroutine.
func inNetns(ns string, f func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: %w", ns, err)
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: %w", ns, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: setns: %w", ns, err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("netns %s: back to the test's namespace: %w", ns, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// lockSubnet takes the exclusive lock of subnet idx without waiting; the
// returned file holds it until closed (or the process dies).
func lockSubnet(idx int) (*os.File, error) {
	f, err := os.OpenFile(podsLockPath(idx), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", podsLockPath(idx), err)
	}
	return f, nil
}
