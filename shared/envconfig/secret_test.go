package envconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeSecret(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return p
}

func TestSecretFile(t *testing.T) {
	dir := t.TempDir()
	const secret = "hunter2-0123456789"
	files := map[string]string{
		"GOOD":       writeSecret(t, dir, "good", secret+"\n", 0o640),
		"OPEN":       writeSecret(t, dir, "open", secret, 0o644),
		"EMPTY":      writeSecret(t, dir, "empty", " \n", 0o600),
		"TWO_LINES":  writeSecret(t, dir, "two", secret+"\n"+secret+"\n", 0o600),
		"LARGE":      writeSecret(t, dir, "large", strings.Repeat("x", MaxSecretFileSize+1), 0o600),
		"MISSING":    filepath.Join(dir, "missing"),
		"DIRECTORY":  dir,
		"UNSET_FILE": "",
	}
	r := New(func(k string) string { return files[k] })
	if got := r.SecretFile("GOOD"); got != secret {
		t.Fatalf("GOOD: %q, want the content without its newline", got)
	}
	if got := r.SecretFile("UNSET_FILE"); got != "" {
		t.Fatalf("unset: %q", got)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("no problems yet: %v", err)
	}
	want := map[string]string{
		"OPEN":      "chmod 640",
		"EMPTY":     "is empty",
		"TWO_LINES": "more than one line",
		"LARGE":     "larger than 4096 bytes",
		"MISSING":   "no such file",
		"DIRECTORY": "not a regular file",
	}
	for name := range want {
		r.SecretFile(name)
	}
	err := r.Err()
	if err == nil {
		t.Fatal("no problems reported")
	}
	for name, what := range want {
		if !strings.Contains(err.Error(), name+": ") || !strings.Contains(err.Error(), what) {
			t.Errorf("problems %q: want %s named with %q", err, name, what)
		}
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("problems show the secret: %q", err)
	}
}

func TestDatabaseURL(t *testing.T) {
	dir := t.TempDir()
	const password = "p@ss/word:with?odd#chars"
	file := writeSecret(t, dir, "pw", password+"\n", 0o400)
	for _, tc := range []struct {
		url, file, want, problem string
	}{
		{url: "postgres://pipeops@db:5432/pipeops?sslmode=disable", file: file,
			want: "postgres://pipeops:p%40ss%2Fword%3Awith%3Fodd%23chars@db:5432/pipeops?sslmode=disable"},
		{url: "postgres://u:inline@db/x", want: "postgres://u:inline@db/x"},
		{url: "postgres://u:inline@db/x", file: file, problem: "DATABASE_URL carries a password and DATABASE_PASSWORD_FILE is set"},
		{url: "postgres://db/x", file: file, problem: "DATABASE_URL names no user"},
		{url: "", file: file, want: ""},
	} {
		env := map[string]string{"DATABASE_URL": tc.url, "DATABASE_PASSWORD_FILE": tc.file}
		r := New(func(k string) string { return env[k] })
		got := r.DatabaseURL("DATABASE_URL", "DATABASE_PASSWORD_FILE")
		err := r.Err()
		if tc.problem != "" {
			if err == nil || !strings.Contains(err.Error(), tc.problem) {
				t.Errorf("%q with %q: %v, want a problem saying %q", tc.url, tc.file, err, tc.problem)
			} else if strings.Contains(err.Error(), password) || strings.Contains(err.Error(), "inline") {
				t.Errorf("the problem shows a password: %v", err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q with %q: %q, %v; want %q", tc.url, tc.file, got, err, tc.want)
		}
	}
}

// FuzzReadSecretFile: whatever a secret file holds, the reader returns one
// trimmed, non-empty line within the size bound, or an error that does not
// carry the content.
func FuzzReadSecretFile(f *testing.F) {
	for _, seed := range []string{"hunter2\n", "", " \n", "a\nb", strings.Repeat("x", MaxSecretFileSize+1), "\x00\xff secret \r\n"} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content []byte) {
		p := filepath.Join(dir, "secret")
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		v, err := ReadSecretFile(p)
		if err != nil {
			if s := strings.TrimSpace(string(content)); len(s) >= 8 && strings.Contains(err.Error(), s) {
				t.Fatalf("the error carries the content: %v", err)
			}
			return
		}
		if v == "" || v != strings.TrimSpace(v) || strings.ContainsAny(v, "\r\n") || len(v) > MaxSecretFileSize {
			t.Fatalf("ReadSecretFile(%q) = %q", content, v)
		}
		if !strings.Contains(string(content), v) {
			t.Fatalf("ReadSecretFile(%q) = %q, not the file's content", content, v)
		}
	})
}
