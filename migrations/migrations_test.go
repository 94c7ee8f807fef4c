package migrations

import (
	"io/fs"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The runner applies files in name order and records them by name, so the
// names are the contract: a fixed-width number that never repeats or skips.
func TestFileNames(t *testing.T) {
	names, err := fs.Glob(FS, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 {
		t.Fatal("no migrations embedded")
	}
	re := regexp.MustCompile(`^(\d{4})_[a-z0-9_]+\.sql$`)
	for i, name := range names {
		t.Run(name, func(t *testing.T) {
			m := re.FindStringSubmatch(name)
			if m == nil {
				t.Fatalf("name %q does not match %s", name, re)
			}
			if n, _ := strconv.Atoi(m[1]); n != i+1 {
				t.Errorf("number %d, want %d: numbers start at 1 and do not skip", n, i+1)
			}
			body, err := fs.ReadFile(FS, name)
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(string(body)) == "" {
				t.Error("empty migration")
			}
			// The runner wraps each file in a transaction of its own, together
			// with its schema_migrations row; a COMMIT inside would record a
			// half-applied file as applied.
			for _, line := range strings.Split(string(body), "\n") {
				switch strings.ToUpper(strings.TrimSuffix(strings.TrimSpace(line), ";")) {
				case "BEGIN", "COMMIT", "ROLLBACK", "START TRANSACTION", "END":
					t.Errorf("transaction control statement %q: the runner owns the transaction", strings.TrimSpace(line))
				}
			}
		})
	}
}
