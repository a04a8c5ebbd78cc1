package localkms

import (
	"os/exec"
	"syscall"
)

// setDeathSignal has the kernel kill local-kms if the process that started
// it dies first (a test binary killed by its timeout), so no server is
// left behind holding a port. (Strictly, the kernel sends the signal when
// the OS thread that started it exits; the Go runtime keeps its threads
// unless a goroutine exits while locked to one.)
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
