package routetable

import (
	"testing"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// TestMain stops the shared PostgreSQL server after the tests and then
// checks that no goroutine outlived them: every Store, listener, pool and
// test proxy must be shut down by the end of the test that made it.
func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil, pgtest.Stop) }
