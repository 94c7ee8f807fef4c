package version

import (
	"runtime"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	oldV, oldC := Version, Commit
	t.Cleanup(func() { Version, Commit = oldV, oldC })

	Version, Commit = "v1.2.3", "abc123"
	got := String("pipeops-agent")
	for _, want := range []string{"pipeops-agent", "v1.2.3", "commit abc123", runtime.GOOS + "/" + runtime.GOARCH} {
		if !strings.Contains(got, want) {
			t.Errorf("String() = %q, want it to contain %q", got, want)
		}
	}

	Commit = ""
	if got := String("x"); !strings.Contains(got, "commit ") {
		t.Errorf("String() without commit = %q, want a commit field", got)
	}
}
