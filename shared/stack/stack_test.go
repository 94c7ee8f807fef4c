package stack_test

import (
	"bytes"
	"context"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/stack"
	"github.com/pipeops/tunnel/shared/stack/stacktest"
	"github.com/pipeops/tunnel/shared/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m, stacktest.Stop) }

// TestSecrets: the stack's control plane seals its keys under a KEK file of
// its own, a signing key rotation reaches the running control plane, and
// neither the database password nor the KEK shows on a command line or in
// a log.
func TestSecrets(t *testing.T) {
	dir := t.TempDir()
	s := stacktest.Start(t, stack.Options{Dir: dir})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	for _, f := range []string{s.KEKFile, s.EnvFile} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, %v; want mode 0600", f, fi.Mode(), err)
		}
	}
	envFile, err := os.ReadFile(s.EnvFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(envFile), "KEY_ENCRYPTION_KEY_FILE='"+s.KEKFile+"'") || !strings.Contains(string(envFile), "DATABASE_URL='"+s.DatabaseURL+"'") {
		t.Fatalf("%s does not set DATABASE_URL and KEY_ENCRYPTION_KEY_FILE", s.EnvFile)
	}

	// Tokens signed before and after a rotation both reach the admin API
	// of the running control plane: the new key id makes it read the keys.
	before, _, err := s.Token(ctx, "admin", 0)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := s.CLI(ctx, "keys", "rotate"); err != nil || !strings.Contains(out, "created") {
		t.Fatalf("keys rotate: %q, %v", out, err)
	}
	after, _, err := s.Token(ctx, "admin", 0)
	if err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"before": before, "after": after} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.ControlPlaneURL+"/api/v1/admin/clusters", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("admin token signed %s the rotation: %s", name, resp.Status)
		}
	}
	out, err := s.CLI(ctx, "keys", "list")
	if err != nil || strings.Count(out, "EdDSA") != 2 {
		t.Fatalf("keys list: %q, %v", out, err)
	}

	u, err := url.Parse(s.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	kek, err := os.ReadFile(s.KEKFile)
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{"the KEK": strings.TrimSpace(string(kek))}
	if pw, ok := u.User.Password(); ok && pw != "" {
		secrets["the database password"] = pw
	}
	var cmdlines []string
	for _, pid := range []int{s.ControlPlane.Pid(), s.Gateway.Pid()} {
		cmdlines = append(cmdlines, "/proc/"+strconv.Itoa(pid)+"/cmdline")
	}
	more, _ := filepath.Glob("/proc/[0-9]*/cmdline") // postgres and its children among them
	logs, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
	for _, p := range append(append(cmdlines, more...), logs...) {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // a process that has exited since
		}
		for what, secret := range secrets {
			if bytes.Contains(b, []byte(secret)) {
				t.Errorf("%s holds %s", p, what)
			}
		}
	}
	if len(logs) == 0 {
		t.Error("no component log found to check")
	}
}
