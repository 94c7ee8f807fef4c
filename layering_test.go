package tunnel_test

import (
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/pipeops/tunnel/"

// forbidden says why a non-test file of package from (a path inside the
// module, such as "gateway/proxy") may not import path, or "" when it may.
// The components meet only through shared/ and the wire: the agent, the
// gateway and the control plane do not reach into each other. The gateway
// reads the control plane's domain types (package controlplane) and, in the
// one package that wires it together, opens the control plane's PostgreSQL
// store; everything else it consumes through interfaces of its own.
func forbidden(from, path string) string {
	top := func(p string) string { return strings.SplitN(p, "/", 2)[0] }
	local, ours := strings.CutPrefix(path, module)
	switch top(from) {
	case "agent":
		if ours && (top(local) == "gateway" || top(local) == "controlplane") {
			return "the agent does not import the servers' packages"
		}
		if strings.HasPrefix(path, "github.com/jackc/pgx") {
			return "the agent never talks to PostgreSQL"
		}
	case "gateway":
		if ours && top(local) == "agent" {
			return "the gateway does not import the agent's packages"
		}
		if ours && top(local) == "controlplane" && local != "controlplane" &&
			!(local == "controlplane/postgres" && from == "gateway/server") {
			return "the gateway uses the control plane's domain package only; its storage is wired in gateway/server alone"
		}
		if strings.HasPrefix(path, "k8s.io/client-go") {
			return "the gateway never talks to a Kubernetes API itself"
		}
	case "controlplane":
		if ours && (top(local) == "agent" || top(local) == "gateway") {
			return "the control plane does not import the agent's or the gateway's packages"
		}
	case "shared":
		// Test environments start whole components; everything else in
		// shared/ is what the components share, so it imports none.
		if ours && !strings.HasPrefix(from, "shared/testenv") && from != "shared/stack" &&
			(top(local) == "agent" || top(local) == "gateway" || top(local) == "controlplane") {
			return "shared/ holds only what the components share; it imports none of them"
		}
	}
	return ""
}

func TestForbiddenRules(t *testing.T) {
	cases := []struct {
		from, path string
		refused    bool
	}{
		{"gateway/routetable", module + "controlplane", false},
		{"gateway/routetable", module + "controlplane/postgres", true},
		{"gateway/server", module + "controlplane/postgres", false},
		{"gateway/server", module + "controlplane/api", true},
		{"gateway/proxy", module + "agent/tunnelclient", true},
		{"gateway/proxy", "k8s.io/client-go/kubernetes", true},
		{"gateway/proxy", module + "shared/tunnel", false},
		{"agent/app", module + "gateway/session", true},
		{"agent/app", module + "controlplane", true},
		{"agent/app", "github.com/jackc/pgx/v5", true},
		{"agent/app", "k8s.io/client-go/kubernetes", false},
		{"controlplane/api", module + "gateway/authn", true},
		{"controlplane/api", module + "shared/auth", false},
		{"shared/tunnel", module + "gateway/session", true},
		{"shared/testenv/tunneltest", module + "gateway/session", false},
		{"loadtest/internal/fleet", module + "agent/tunnelclient", false},
	}
	for _, c := range cases {
		if got := forbidden(c.from, c.path) != ""; got != c.refused {
			t.Errorf("%s importing %s: refused=%v, want %v", c.from, c.path, got, c.refused)
		}
	}
}

// TestLayering reads the imports of every non-test Go file in the module
// and fails on each one the rules above forbid. Tests may import across
// components (a gateway test runs against the real PostgreSQL store).
func TestLayering(t *testing.T) {
	fset := token.NewFileSet()
	files := 0
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if p != "." && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		files++
		from := filepath.ToSlash(filepath.Dir(p))
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if why := forbidden(from, path); why != "" {
				t.Errorf("%s imports %s: %s", p, path, why)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 100 {
		t.Fatalf("read only %d Go files: is the test running from the module root?", files)
	}
}
