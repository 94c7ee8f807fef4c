package cli

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// openTerminal returns a new pseudo-terminal: what the user types goes into
// master, and the command reads it from the terminal, slave.
func openTerminal(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pseudo-terminal number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// On a terminal, cluster delete asks, and deletes on y only.
func TestClusterDeleteAsks(t *testing.T) {
	env := deleteEnv(t, "prod-eu")
	for _, tt := range []struct {
		answer  string
		deleted bool
	}{
		{"n\n", false},
		{"\n", false},
		{"yes please\n", false},
		{"y\n", true},
	} {
		t.Run(strings.TrimSpace(tt.answer), func(t *testing.T) {
			master, slave := openTerminal(t)
			// Typed ahead: the terminal holds the line until it is read.
			if _, err := master.WriteString(tt.answer); err != nil {
				t.Fatal(err)
			}
			code, out, errOut := runWithInput(t, env, slave, "cluster", "delete", "prod-eu")
			if !strings.Contains(errOut, "Delete cluster prod-eu (id ") || !strings.Contains(errOut, "and its 1 route? ") {
				t.Errorf("stderr %q does not ask", errOut)
			}
			switch {
			case tt.deleted && (code != 0 || !strings.Contains(out, "cluster prod-eu deleted")):
				t.Fatalf("answer %q: exit %d %q %q, want deleted", tt.answer, code, out, errOut)
			case !tt.deleted && (code != 1 || !strings.Contains(errOut, "not deleted")):
				t.Fatalf("answer %q: exit %d %q %q, want not deleted", tt.answer, code, out, errOut)
			}
			if exists(t, env, "prod-eu") == tt.deleted {
				t.Fatalf("answer %q: the cluster exists: %v", tt.answer, !tt.deleted)
			}
		})
	}
}
