//go:build !linux

package testenv

import (
	"errors"
	"os"
)

var errPodsLinuxOnly = errors.New("pods need Linux network namespaces")

// podsSupported reports why pods cannot be made on this OS.
func podsSupported() error { return errPodsLinuxOnly }

// inNetns cannot enter a network namespace outside Linux.
func inNetns(string, func() error) error { return errPodsLinuxOnly }

// lockSubnet is never reached outside Linux (NewPods stops first).
func lockSubnet(int) (*os.File, error) { return nil, errPodsLinuxOnly }
