package tokens_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
)

// TestIssueIdentity: user tokens carry the person and groups they were
// issued for, admin tokens the issuer's admin identity whatever the request
// says, and both verify against their record; names auth.ValidateIdentity
// refuses are refused with an error that quotes them.
func TestIssueIdentity(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	cluster, err := db.CreateCluster(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	kek := newKeyring(t)
	defaults := newIssuer(t, db, kek)
	custom, err := tokens.NewIssuer(ctx, db, db, tokens.Options{KEK: kek, AdminUser: "ops-admin", AdminGroups: []string{"platform", "oncall"}})
	if err != nil {
		t.Fatal(err)
	}
	user := func(subject string, groups ...string) tokens.Request {
		return tokens.Request{Kind: auth.KindUser, Clusters: []string{cluster.UUID}, Subject: subject, Groups: groups}
	}

	ok := []struct {
		name       string
		iss        *tokens.Issuer
		req        tokens.Request
		wantUser   string
		wantGroups []string
	}{
		{"user with groups", defaults, user("alice", "dev", "ops"), "alice", []string{"dev", "ops"}},
		{"user without groups", defaults, user("bob@example.com"), "bob@example.com", nil},
		{"user naming nobody", defaults, user(""), "", nil},
		{"admin, default identity", defaults, tokens.Request{Kind: auth.KindAdmin}, tokens.DefaultAdminUser, []string{tokens.DefaultAdminGroup}},
		{"admin, subject replaced", defaults, tokens.Request{Kind: auth.KindAdmin, Subject: "test"}, tokens.DefaultAdminUser, []string{tokens.DefaultAdminGroup}},
		{"admin, configured identity", custom, tokens.Request{Kind: auth.KindAdmin}, "ops-admin", []string{"platform", "oncall"}},
		{"agent", defaults, tokens.Request{Kind: auth.KindAgent, ClusterUUID: cluster.UUID, Subject: "agent:c1"}, "", nil},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			tok, rec, err := tc.iss.Issue(ctx, tc.req)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			claims, err := tc.iss.Verifier().Verify(ctx, tok)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			gotUser, gotGroups := claims.Identity()
			if gotUser != tc.wantUser || !slices.Equal(gotGroups, tc.wantGroups) {
				t.Errorf("Identity() = %q, %q; want %q, %q", gotUser, gotGroups, tc.wantUser, tc.wantGroups)
			}
			stored, err := db.Token(ctx, rec.ID)
			if err != nil {
				t.Fatal(err)
			}
			if tc.req.Kind != auth.KindAgent && (stored.Subject != tc.wantUser || !sameGroups(stored.Groups, tc.wantGroups)) {
				t.Errorf("record: subject %q, groups %q; want %q, %q", stored.Subject, stored.Groups, tc.wantUser, tc.wantGroups)
			}
		})
	}

	bad := []struct {
		name string
		req  tokens.Request
		want string
	}{
		{"reserved user", user("system:admin"), `"system:admin"`},
		{"reserved group", user("alice", "dev", "system:masters"), `"system:masters"`},
		{"empty group", user("alice", "dev", ""), "group name is empty"},
		{"unprintable user", user("alice\x1b[0m"), `"alice\x1b[0m"`},
		{"overlong group", user("alice", strings.Repeat("g", auth.MaxNameLen+1)), "more than 253"},
		{"groups without a user", user("", "dev"), "needs a subject"},
		{"groups on an admin token", tokens.Request{Kind: auth.KindAdmin, Groups: []string{"dev"}}, "user tokens only"},
		{"groups on an agent token", tokens.Request{Kind: auth.KindAgent, ClusterUUID: cluster.UUID, Groups: []string{"dev"}}, "user tokens only"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := defaults.Issue(ctx, tc.req)
			if controlplane.ErrorCode(err) != controlplane.EINVALID || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Issue = %v, want EINVALID containing %s", err, tc.want)
			}
		})
	}

	for name, opts := range map[string]tokens.Options{
		`"system:admin"`:      {KEK: kek, AdminUser: "system:admin"},
		`"system:masters"`:    {KEK: kek, AdminGroups: []string{"admins", "system:masters"}},
		"group name is empty": {KEK: kek, AdminGroups: []string{""}},
	} {
		if _, err := tokens.NewIssuer(ctx, db, db, opts); err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "admin identity") {
			t.Errorf("NewIssuer with admin identity %q %q: %v, want an error naming %s", opts.AdminUser, opts.AdminGroups, err, name)
		}
	}
}

// sameGroups compares a record's groups with the expected ones, an empty
// list being no groups.
func sameGroups(got, want []string) bool {
	return len(got) == 0 && len(want) == 0 || slices.Equal(got, want)
}
