package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// runWithInput is run with stdin as the command's standard input.
func runWithInput(t *testing.T, env map[string]string, stdin io.Reader, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	r := &runner{getenv: envOf(env), stdin: stdin, stdout: &out, stderr: &errOut}
	code := r.execute(context.Background(), args)
	return code, out.String(), errOut.String()
}

// deleteEnv is a database with clusters of the given names, each with its
// agent token and one route to a hostname of its own.
func deleteEnv(t *testing.T, names ...string) map[string]string {
	t.Helper()
	url := pgtest.URL(t)
	env := map[string]string{"DATABASE_URL": url, "LOG_LEVEL": "warn", "KEY_ENCRYPTION_KEY": kekValue(t)}
	for _, name := range names {
		if code, out, errOut := run(t, env, "cluster", "create", name); code != 0 {
			t.Fatalf("cluster create %s: %d %q %q", name, code, out, errOut)
		}
	}
	ctx := context.Background()
	db, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.Ownership.TrustUnverified = true
	for _, name := range names {
		c, err := db.ClusterByName(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.RegisterRoute(ctx, controlplane.Route{ClusterUUID: c.UUID, Hostname: name + ".example.com", ServiceName: "web", ServicePort: 80}); err != nil {
			t.Fatal(err)
		}
	}
	return env
}

// exists reports whether `cluster show` finds the cluster.
func exists(t *testing.T, env map[string]string, name string) bool {
	t.Helper()
	code, _, errOut := run(t, env, "cluster", "show", name)
	if code != 0 && !strings.Contains(errOut, "not_found") {
		t.Fatalf("cluster show %s: %d %q", name, code, errOut)
	}
	return code == 0
}

func TestClusterDelete(t *testing.T) {
	env := deleteEnv(t, "prod-eu", "staging", "dev")
	noInput := strings.NewReader("y\n") // not a terminal: never read

	t.Run("without --yes and no terminal", func(t *testing.T) {
		code, out, errOut := runWithInput(t, env, noInput, "cluster", "delete", "prod-eu")
		if code != 2 || !strings.Contains(errOut, "pass --yes") || out != "" {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 2 and an error saying to pass --yes", code, out, errOut)
		}
		if !exists(t, env, "prod-eu") {
			t.Fatal("deleted without --yes")
		}
	})

	t.Run("--yes", func(t *testing.T) {
		code, out, errOut := runWithInput(t, env, noInput, "cluster", "delete", "prod-eu", "--yes")
		if code != 0 {
			t.Fatalf("exit %d %q %q", code, out, errOut)
		}
		words := strings.Join(strings.Fields(out), " ")
		for _, want := range []string{"cluster prod-eu deleted (id ", "routes removed: 1", "hostnames released: prod-eu.example.com",
			"domain grants released: none", "tokens revoked: 1"} {
			if !strings.Contains(words, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		if exists(t, env, "prod-eu") {
			t.Fatal("still there after delete --yes")
		}
		if code, _, errOut := runWithInput(t, env, noInput, "cluster", "delete", "prod-eu", "-y"); code != 1 || !strings.Contains(errOut, "not_found") {
			t.Fatalf("deleting twice: exit %d %q, want 1 not_found", code, errOut)
		}
	})

	t.Run("-o json", func(t *testing.T) {
		code, out, errOut := runWithInput(t, env, noInput, "cluster", "delete", "staging", "--yes", "-o", "json")
		var got struct {
			Status        string   `json:"status"`
			UUID          string   `json:"uuid"`
			Name          string   `json:"name"`
			RoutesRemoved *int     `json:"routes_removed"`
			Hostnames     []string `json:"hostnames_released"`
			TokensRevoked *int     `json:"tokens_revoked"`
		}
		if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil {
			t.Fatalf("exit %d %q %q (%v)", code, out, errOut, err)
		}
		if got.Status != "deleted" || got.UUID == "" || got.Name != "staging" || got.RoutesRemoved == nil || *got.RoutesRemoved != 1 ||
			len(got.Hostnames) != 1 || got.TokensRevoked == nil || *got.TokensRevoked != 1 {
			t.Fatalf("JSON %s", out)
		}
	})

	// /dev/null is a character device, taken for a terminal; it answers
	// nothing, which is no.
	t.Run("no answer", func(t *testing.T) {
		devNull, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer devNull.Close()
		code, out, errOut := runWithInput(t, env, devNull, "cluster", "delete", "dev")
		if code != 1 || !strings.Contains(errOut, "Delete cluster dev (id ") || !strings.Contains(errOut, "not deleted") || out != "" {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 1, the question, and not deleted", code, out, errOut)
		}
		if !exists(t, env, "dev") {
			t.Fatal("deleted without an answer")
		}
	})
}

// Without --yes and without a terminal the command refuses before it
// reads the configuration or opens the database.
func TestClusterDeleteRefusesBeforeTheDatabase(t *testing.T) {
	db := newFakeDatabase(t)
	env := map[string]string{"DATABASE_URL": db.url(), "KEY_ENCRYPTION_KEY": testKEK}
	r, w, err := os.Pipe() // a file, but no terminal
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	start := time.Now()
	code, _, errOut := runWithInput(t, env, r, "cluster", "delete", "prod-eu")
	if code != 2 || !strings.Contains(errOut, "standard input is not a terminal") || !strings.Contains(errOut, "pass --yes") {
		t.Fatalf("exit %d %q, want 2 and an error saying to pass --yes", code, errOut)
	}
	if n := db.conns.Load(); n != 0 || time.Since(start) > 2*time.Second {
		t.Fatalf("%d connections to the database, %s", n, time.Since(start))
	}
}
