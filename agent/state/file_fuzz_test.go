package state_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/pipeops/tunnel/agent/state"
)

// FuzzFileStore feeds a FileStore a state file of any content: a file that
// does not decode is ErrCorrupt, never a partly filled State, and Save
// replaces it with a good one; a State that loads is saved and loaded back
// unchanged (after the stamp Save gives a zero UpdatedAt).
func FuzzFileStore(f *testing.F) {
	// TestFileStore's and TestStoreContract's files, as Save writes them,
	// one with a field a newer agent might add, and broken ones.
	for _, s := range []string{
		"{\n  \"cluster_id\": \"c-1\",\n  \"updated_at\": \"2026-11-23T10:00:00.123456789Z\"\n}\n",
		`{"cluster_id":"c-1","cluster_uuid":"u-1","gateway_ws_url":"wss://gw.example.com/ws","agent_id":"a-1","updated_at":"2026-11-23T10:00:00.123456789Z"}`,
		`{"cluster_id":"c-1","future_field":{"nested":[1,2]}}`,
		`{"cluster_id":"c-2","updated_at":"2026-11-23T12:00:00+02:00"}`,
		`{"updated_at":"0000-01-01T00:00:00+01:00"}`,
		`{"updated_at":"not a time"}`,
		`{"cluster_id":7}`,
		`{not json`,
		`null`,
		``,
	} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "state.json")
		store := state.NewFile(path)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}

		s, err := store.Load(ctx)
		switch {
		case err != nil && !errors.Is(err, state.ErrCorrupt):
			t.Fatalf("Load: %v, want ErrCorrupt or success", err)
		case err != nil && s != (state.State{}):
			t.Fatalf("Load returned %+v with %v", s, err)
		case err == nil:
			checkStateRoundTrip(t, ctx, store, s)
			return
		}

		// Save replaces a corrupt file whole: it never reads the old one.
		fresh := state.State{ClusterID: "c-new"}
		if err := store.Save(ctx, fresh); err != nil {
			t.Fatalf("Save over a corrupt file: %v", err)
		}
		if got, err := store.Load(ctx); err != nil || got.ClusterID != fresh.ClusterID {
			t.Fatalf("Load after Save over a corrupt file = %+v, %v", got, err)
		}
	})
}

func checkStateRoundTrip(t *testing.T, ctx context.Context, store *state.FileStore, s state.State) {
	t.Helper()
	if err := store.Save(ctx, s); err != nil {
		// JSON times have four-digit years; one loaded with an offset can
		// fall outside them in UTC, as Save keeps it.
		if y := s.UpdatedAt.UTC().Year(); y >= 0 && y <= 9999 {
			t.Fatalf("Save of loaded %+v: %v", s, err)
		}
		return
	}
	saved, err := store.Load(ctx)
	if err != nil {
		t.Fatalf("Load after Save of %+v: %v", s, err)
	}
	want := s
	if want.UpdatedAt.IsZero() {
		want.UpdatedAt = saved.UpdatedAt // Save stamps the time
	}
	want.UpdatedAt = want.UpdatedAt.UTC().Round(0)
	if saved != want || saved.UpdatedAt.IsZero() {
		t.Fatalf("saved %+v, loaded back %+v", want, saved)
	}
}
