package routetable

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// TestMain stops the shared PostgreSQL server after the tests and then
// checks that no goroutine outlived them: every Store, listener, pool and
// test proxy must be shut down by the end of the test that made it.
func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}
