// Package version holds the build identity of every binary in the module.
//
// The variables are set at link time by the Makefile:
//
//	go build -ldflags "-X github.com/pipeops/tunnel/shared/version.Version=v1.2.3 ..."
//
// A plain `go build` leaves the defaults, and String falls back to the VCS
// revision that the Go toolchain embeds in the binary.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is the release version; "dev" for untagged builds.
var Version = "dev"

// Commit is the git commit the binary was built from; empty when unknown.
var Commit = ""

// String returns a one-line description of the named binary's build, for
// `--version` output and logs.
func String(binary string) string {
	commit := Commit
	if commit == "" {
		commit = vcsRevision()
	}
	if commit == "" {
		commit = "unknown"
	}
	return fmt.Sprintf("%s %s (commit %s, %s, %s/%s)", binary, Version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func vcsRevision() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return ""
	}
	return rev + dirty
}
