package postgres

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
)

// sealedKey is a stored key; the store keeps sealed values opaque, so any
// bytes do.
func sealedKey(id, blob string) controlplane.SigningKey {
	return controlplane.SigningKey{ID: id, Algorithm: "EdDSA", Sealed: []byte(blob), KEKID: "0123456789abcdef"}
}

func TestSigningKeys(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)

	keys, err := db.SigningKeys(ctx)
	if err != nil || len(keys) != 0 {
		t.Fatalf("SigningKeys on an empty database = %v, %v", keys, err)
	}
	older := sealedKey("k1", "sealed-one")
	older.CreatedAt = clk.Now()
	newer := sealedKey("k2", "sealed-two") // CreatedAt: Now
	clk.Add(time.Hour)

	tests := []struct {
		name string
		key  controlplane.SigningKey
		code string
	}{
		{"older", older, ""},
		{"newer", newer, ""},
		{"duplicate", older, controlplane.ECONFLICT},
		{"no id", sealedKey("", "x"), controlplane.EINVALID},
		{"no algorithm", controlplane.SigningKey{ID: "k3", Sealed: []byte("x"), KEKID: "k"}, controlplane.EINVALID},
		{"no key", controlplane.SigningKey{ID: "k3", Algorithm: "EdDSA", KEKID: "k"}, controlplane.EINVALID},
		{"no KEK id", controlplane.SigningKey{ID: "k3", Algorithm: "EdDSA", Sealed: []byte("x")}, controlplane.EINVALID},
		{"plaintext", controlplane.SigningKey{ID: "k3", Algorithm: "EdDSA", PrivatePEM: []byte("-----BEGIN PRIVATE KEY-----\n")}, controlplane.EINVALID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantCode(t, db.AddSigningKey(ctx, tt.key), tt.code) })
	}

	keys, err = db.SigningKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0].ID != "k2" || keys[1].ID != "k1" {
		t.Fatalf("SigningKeys = %+v, want k2 then k1", keys)
	}
	if string(keys[1].Sealed) != "sealed-one" || keys[1].KEKID != older.KEKID || keys[1].PrivatePEM != nil || keys[1].Algorithm != "EdDSA" ||
		!keys[1].CreatedAt.Equal(older.CreatedAt) || !keys[0].CreatedAt.Equal(clk.Now()) {
		t.Errorf("keys read back as %+v", keys)
	}
}

func TestResealSigningKeys(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	// A key as versions before sealing stored it.
	if _, err := db.Pool().Exec(ctx, `INSERT INTO signing_keys (id, algorithm, private_pem, created_at) VALUES ('legacy', 'EdDSA', 'PEM', $1)`, clk.Now()); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute)
	wantCode(t, db.AddSigningKey(ctx, sealedKey("k2", "under-old")), "")
	keys, err := db.SigningKeys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("SigningKeys = %v, %v", keys, err)
	}
	k2, legacy := keys[0], keys[1]
	if string(legacy.PrivatePEM) != "PEM" || legacy.Sealed != nil || legacy.KEKID != "" {
		t.Fatalf("legacy key read as %+v", legacy)
	}

	// The schema holds a row to exactly one form.
	if _, err := db.Pool().Exec(ctx, `UPDATE signing_keys SET sealed_key = 'x', kek_id = 'y' WHERE id = 'legacy'`); err == nil {
		t.Fatal("a row with both a plaintext and a sealed key was accepted")
	}
	if _, err := db.Pool().Exec(ctx, `UPDATE signing_keys SET kek_id = NULL WHERE id = 'k2'`); err == nil {
		t.Fatal("a sealed key without a KEK id was accepted")
	}

	stale := k2
	stale.Sealed = []byte("something else")
	tests := []struct {
		name string
		rs   []controlplane.Reseal
		code string
	}{
		{"no sealed key", []controlplane.Reseal{{Was: k2, KEKID: "new"}}, controlplane.EINVALID},
		// One stale entry stops the whole batch: the legacy key stays as it was.
		{"stale", []controlplane.Reseal{{Was: legacy, Sealed: []byte("s1"), KEKID: "new"}, {Was: stale, Sealed: []byte("s2"), KEKID: "new"}}, controlplane.ECONFLICT},
		{"retired meanwhile", []controlplane.Reseal{{Was: sealedKey("gone", "x"), Sealed: []byte("s"), KEKID: "new"}}, controlplane.ECONFLICT},
		{"both", []controlplane.Reseal{{Was: legacy, Sealed: []byte("legacy-under-new"), KEKID: "new"}, {Was: k2, Sealed: []byte("k2-under-new"), KEKID: "new"}}, ""},
		{"again, from the old forms", []controlplane.Reseal{{Was: legacy, Sealed: []byte("x"), KEKID: "new"}}, controlplane.ECONFLICT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantCode(t, db.ResealSigningKeys(ctx, tt.rs), tt.code) })
		if tt.code == controlplane.ECONFLICT && tt.name == "stale" {
			if got, _ := db.SigningKeys(ctx); string(got[1].PrivatePEM) != "PEM" {
				t.Fatalf("a failed batch changed the legacy key: %+v", got[1])
			}
		}
	}
	keys, err = db.SigningKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.PrivatePEM != nil || k.KEKID != "new" || !bytes.HasSuffix(k.Sealed, []byte("-under-new")) {
			t.Errorf("after the reseal: %+v", k)
		}
	}
}

func TestRetireSigningKey(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	for _, id := range []string{"k1", "k2", "k3"} {
		wantCode(t, db.AddSigningKey(ctx, sealedKey(id, "s-"+id)), "")
		clk.Add(time.Minute)
	}
	tests := []struct {
		id, code string
	}{
		{"k3", controlplane.EINVALID}, // the newest signs
		{"k1", ""},
		{"k1", controlplane.ENOTFOUND},
		{"k2", ""},
		{"k3", controlplane.EINVALID}, // and the only one left
		{"nope", controlplane.ENOTFOUND},
	}
	for _, tt := range tests {
		wantCode(t, db.RetireSigningKey(ctx, tt.id), tt.code)
	}
	if ids := queryStrings(t, db, `SELECT id FROM signing_keys`); len(ids) != 1 || ids[0] != "k3" {
		t.Fatalf("keys left: %v, want [k3]", ids)
	}
}
