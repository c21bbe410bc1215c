package testenv

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the child die with the test binary, so a panicking
// test leaves no agent behind.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
