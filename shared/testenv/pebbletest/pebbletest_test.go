package pebbletest

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/pipeops/tunnel/shared/testenv"
)

// TestStart: the CA comes up on loopback with a directory behind its own
// root, and its management interface hands out the ACME root and
// intermediate, the first signing the second.
func TestStart(t *testing.T) {
	testenv.LeakCheck(t)
	ca := Start(t, Options{HTTPPort: 1, TLSPort: 1}) // no challenges in this test
	var body []byte
	if err := ca.get(context.Background(), ca.DirectoryURL, &body); err != nil {
		t.Fatal(err)
	}
	var dir map[string]any
	if err := json.Unmarshal(body, &dir); err != nil {
		t.Fatalf("directory: %v: %s", err, body)
	}
	for _, k := range []string{"newNonce", "newAccount", "newOrder"} {
		if _, ok := dir[k].(string); !ok {
			t.Errorf("directory lacks %s: %s", k, body)
		}
	}
	root, intermediate, err := ca.Issuers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := intermediate.CheckSignatureFrom(root); err != nil {
		t.Fatalf("intermediate %q not signed by root %q: %v", intermediate.Subject, root.Subject, err)
	}
}
