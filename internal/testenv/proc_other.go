//go:build !linux

package testenv

import "os/exec"

// setDeathSignal is Linux-only; elsewhere t.Cleanup is the only guard.
func setDeathSignal(*exec.Cmd) {}
