// Package child starts the load test's helper processes (the load worker,
// the relays): children driven over their stdin and stdout, writing to our
// stderr, and killed if the load test dies, so none outlives a crashed run.
package child

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
)

// Start starts name with args and returns it with pipes to its stdin and
// from its stdout. The caller owns the process: it must Wait for it.
func Start(name string, args ...string) (*exec.Cmd, io.WriteCloser, io.ReadCloser, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	return cmd, in, out, nil
}
