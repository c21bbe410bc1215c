//go:build !linux

package capture

import "errors"

// Netlink programs nf_tables, which exists only on Linux.
type Netlink struct {
	NetNSFd int
}

var errNotLinux = errors.New("nftables: netfilter exists only on Linux")

// Install fails: there is no netfilter here.
func (Netlink) Install(Ruleset) error { return errNotLinux }

// Remove fails: there is no netfilter here.
func (Netlink) Remove([]Family) error { return errNotLinux }
