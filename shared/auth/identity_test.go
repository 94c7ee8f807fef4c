package auth

import (
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// identityCases are ValidateIdentity's table; they seed its fuzz test too.
// want is a fragment of the error ("" for valid), which must quote the bad
// value so that the person who typed it sees which one.
var identityCases = []struct {
	name   string
	user   string
	groups []string
	want   string
}{
	{"user alone", "alice", nil, ""},
	{"user and groups", "alice@example.com", []string{"dev", "ops"}, ""},
	{"default admin identity", "pipeops:admin", []string{"pipeops:admins"}, ""},
	{"inner space", "Jane Doe", []string{"platform team"}, ""},
	{"non-ASCII", "zoë", []string{"équipe"}, ""},
	{"longest user", strings.Repeat("u", MaxNameLen), nil, ""},
	{"system-ish but not reserved", "System:masters", []string{"systems:ops", "my-system:x"}, ""},
	{"empty user", "", nil, "user name is empty"},
	{"empty group", "alice", []string{"dev", ""}, "group name is empty"},
	{"reserved user", "system:admin", nil, `user name "system:admin" starts with "system:"`},
	{"reserved group", "alice", []string{"dev", "system:masters"}, `group name "system:masters" starts with "system:"`},
	{"service account", "system:serviceaccount:kube-system:default", nil, `"system:serviceaccount:kube-system:default"`},
	{"user too long", strings.Repeat("u", MaxNameLen+1), nil, `user name "uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu..." is 254 bytes long, more than 253`},
	{"group too long", "alice", []string{strings.Repeat("é", 127)}, "is 254 bytes long"},
	{"control character", "alice\n", nil, `user name "alice\n" holds a character that is not printable`},
	{"escape sequence", "alice", []string{"\x1b[2Jdev"}, `group name "\x1b[2Jdev" holds a character that is not printable`},
	{"format character", "ali\u200bce", nil, "not printable"},
	{"invalid UTF-8", "alice\xff", nil, `user name "alice\xff" is not valid UTF-8`},
	{"leading space", " alice", nil, `user name " alice" starts or ends with a space`},
	{"trailing space", "alice", []string{"dev "}, `group name "dev " starts or ends with a space`},
}

func TestValidateIdentity(t *testing.T) {
	for _, tc := range identityCases {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateIdentity(tc.user, tc.groups)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("ValidateIdentity(%q, %q) = %v, want nil", tc.user, tc.groups, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("ValidateIdentity(%q, %q) = %v, want an error containing %s", tc.user, tc.groups, err, tc.want)
			}
		})
	}
}

func TestIdentity(t *testing.T) {
	cases := []struct {
		name       string
		claims     *Claims
		wantUser   string
		wantGroups []string
	}{
		{"user with groups", claimsFor(KindUser, "alice", "dev", "ops"), "alice", []string{"dev", "ops"}},
		{"user without groups", claimsFor(KindUser, "alice"), "alice", nil},
		{"kubeconfig default subject", claimsFor(KindUser, "kubeconfig:prod-eu"), "kubeconfig:prod-eu", nil},
		{"user naming nobody", claimsFor(KindUser, ""), "", nil},
		{"groups without a user", claimsFor(KindUser, "", "dev"), "", nil},
		{"admin", claimsFor(KindAdmin, "pipeops:admin", "pipeops:admins"), "pipeops:admin", []string{"pipeops:admins"}},
		{"agent", claimsFor(KindAgent, "agent:prod-eu", "dev"), "", nil},
		{"unknown kind", claimsFor("root", "alice"), "", nil},
		{"reserved subject", claimsFor(KindUser, "system:admin"), "", nil},
		{"reserved group", claimsFor(KindAdmin, "alice", "dev", "system:masters"), "", nil},
		{"unprintable group", claimsFor(KindUser, "alice", "dev\r"), "", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			user, groups := tc.claims.Identity()
			if user != tc.wantUser || !slices.Equal(groups, tc.wantGroups) {
				t.Fatalf("Identity() = %q, %q; want %q, %q", user, groups, tc.wantUser, tc.wantGroups)
			}
			if len(groups) > 0 {
				groups[0] = "changed"
				if tc.claims.Groups[0] == "changed" {
					t.Fatal("Identity returned the claims' own groups slice, not a copy")
				}
			}
		})
	}
}

func claimsFor(kind Kind, subject string, groups ...string) *Claims {
	c := &Claims{Kind: kind, Groups: groups}
	c.Subject = subject
	return c
}

// FuzzValidateIdentity: whatever it is given, ValidateIdentity does not
// panic, and every name it accepts is one Kubernetes may be asked to
// impersonate safely.
func FuzzValidateIdentity(f *testing.F) {
	for _, tc := range identityCases {
		f.Add(tc.user, strings.Join(tc.groups, "\x00"))
	}
	f.Fuzz(func(t *testing.T, user, groupList string) {
		var groups []string
		if groupList != "" {
			groups = strings.Split(groupList, "\x00")
		}
		if ValidateIdentity(user, groups) != nil {
			return
		}
		for _, name := range append([]string{user}, groups...) {
			if name == "" || len(name) > MaxNameLen || !utf8.ValidString(name) || strings.HasPrefix(name, ReservedPrefix) ||
				strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
				t.Fatalf("ValidateIdentity accepted %q (of %q, %q)", name, user, groups)
			}
		}
	})
}
