package hostnames

import (
	"errors"
	"strings"
	"testing"
)

var normalizeCases = []struct {
	in, want string // want "" means refused
}{
	{"app.example.com", "app.example.com"},
	{"App.Example.COM", "app.example.com"},
	{"app.example.com.", "app.example.com"},
	{"*.Example.com.", "*.example.com"},
	{"bücher.example", "xn--bcher-kva.example"},
	{"xn--bcher-kva.example", "xn--bcher-kva.example"},
	{"*.ÉCOLE.example", "*.xn--cole-9oa.example"},
	{"a-b.c-d.test", "a-b.c-d.test"},
	{"", ""},
	{".", ""},
	{"*", ""},
	{"*.", ""},
	{"a..b", ""},
	{".a.b", ""},
	{"a.b..", ""},
	{"*.*.example.com", ""},
	{"a.*.example.com", ""},
	{"app*.example.com", ""},
	{"app.example.com:443", ""},
	{"under_score.example.com", ""},
	{"-lead.example.com", ""},
	{"trail-.example.com", ""},
	{"127.0.0.1", ""},
	{"[::1]", ""},
	{"a b.example.com", ""},
	{strings.Repeat("a", 64) + ".example.com", ""},
	{strings.Repeat("abcdefgh.", 28) + "com", ""}, // 255 characters
	{strings.Repeat("x", 5000), ""},
}

func TestNormalize(t *testing.T) {
	for _, tc := range normalizeCases {
		got, err := Normalize(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("Normalize(%q) = %q, want an error", tc.in, got)
			} else if !errors.Is(err, ErrInvalid) {
				t.Errorf("Normalize(%q) error %v does not wrap ErrInvalid", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestOverlapsAndCovers(t *testing.T) {
	n := func(d string) Claim { return Claim{Kind: Name, Domain: d} }
	w := func(d string) Claim { return Claim{Kind: Wildcard, Domain: d} }
	g := func(d string) Claim { return Claim{Kind: Grant, Domain: d} }
	cases := []struct {
		a, b             Claim
		overlaps, covers bool // covers: a covers b
	}{
		{n("a.example.com"), n("a.example.com"), true, true},
		{n("a.example.com"), n("b.example.com"), false, false},
		{w("example.com"), n("a.example.com"), true, true},
		{w("example.com"), n("b.a.example.com"), true, true}, // any depth
		{w("example.com"), n("example.com"), false, false},   // not the apex
		{w("example.com"), w("a.example.com"), true, true},   // nested wildcard
		{w("a.example.com"), w("example.com"), true, false},
		{w("example.com"), w("example.com"), true, true},
		{w("example.com"), n("notexample.com"), false, false}, // label boundary
		{w("example.com"), n("a.example.org"), false, false},
		{g("example.com"), n("example.com"), true, true},
		{g("example.com"), n("a.b.example.com"), true, true},
		{g("example.com"), w("example.com"), true, true},
		{g("a.example.com"), w("example.com"), true, false},
		{g("example.com"), g("a.example.com"), true, true},
		{g("a.example.com"), g("b.example.com"), false, false},
		{n("a.example.com"), w("example.com"), true, false},
	}
	for _, tc := range cases {
		if got := Overlaps(tc.a, tc.b); got != tc.overlaps {
			t.Errorf("Overlaps(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.overlaps)
		}
		if got := Overlaps(tc.b, tc.a); got != tc.overlaps {
			t.Errorf("Overlaps(%v, %v) = %v, want %v (symmetry)", tc.b, tc.a, got, tc.overlaps)
		}
		if got := Covers(tc.a, tc.b); got != tc.covers {
			t.Errorf("Covers(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.covers)
		}
	}
}

// decideCase is one claim by cluster "b" (named "beta") against claims of
// cluster "a" and of "b" itself.
type decideCase struct {
	name     string
	host     string // the route hostname claimed (normalised by the test)
	grant    bool   // claim host as a domain grant instead
	existing []Claim
	policy   Policy
	code     string // refusal code; "" means allowed
	verified bool
	mention  string // the message must name this
}

var base = Policy{BaseDomains: []string{"apps.example.com"}}

var decideCases = []decideCase{
	{name: "the wildcard takeover", host: "a.wild.example.com",
		existing: []Claim{{Kind: Wildcard, Domain: "wild.example.com", Cluster: "a", Verified: true}},
		code:     CodeConflict, mention: "*.wild.example.com"},
	{name: "a deeper name under another's wildcard", host: "x.a.wild.example.com",
		existing: []Claim{{Kind: Wildcard, Domain: "wild.example.com", Cluster: "a", Verified: true}},
		code:     CodeConflict, mention: "*.wild.example.com"},
	{name: "a nested wildcard under another's wildcard", host: "*.a.wild.example.com",
		existing: []Claim{{Kind: Wildcard, Domain: "wild.example.com", Cluster: "a", Verified: true}},
		code:     CodeConflict, mention: "*.wild.example.com"},
	{name: "a wildcard over another's name", host: "*.example.com",
		existing: []Claim{{Kind: Name, Domain: "shop.example.com", Cluster: "a", Verified: true}},
		code:     CodeConflict, mention: "would cover shop.example.com"},
	{name: "the same name", host: "shop.example.com",
		existing: []Claim{{Kind: Name, Domain: "shop.example.com", Cluster: "a", Verified: true}},
		code:     CodeConflict, mention: "registered to another cluster"},
	{name: "the apex of another's wildcard is free", host: "wild.example.com",
		existing: []Claim{{Kind: Wildcard, Domain: "wild.example.com", Cluster: "a", Verified: true}},
		verified: false},
	{name: "another's unverified claim blocks nothing", host: "shop.example.com",
		existing: []Claim{{Kind: Name, Domain: "shop.example.com", Cluster: "a"}},
		verified: false},
	{name: "under another's grant", host: "x.granted.example.com",
		existing: []Claim{{Kind: Grant, Domain: "granted.example.com", Cluster: "a", Verified: true}},
		code:     CodeConflict, mention: "the domain granted.example.com"},
	{name: "a top-level domain", host: "com", code: CodeInvalid, mention: "public suffix"},
	{name: "a wildcard on a top-level domain", host: "*.com", code: CodeInvalid},
	{name: "a wildcard on a two-label suffix", host: "*.co.uk", code: CodeInvalid},
	{name: "a single label", host: "localhost", code: CodeInvalid},
	{name: "a registrable name under a two-label suffix", host: "shop.example.co.uk", verified: false},
	{name: "a custom domain needs verification", host: "shop.example.org", verified: false, mention: "_pipeops-challenge.shop.example.org"},
	{name: "custom domain, verification off", host: "shop.example.org", policy: Policy{TrustUnverified: true}, verified: true},
	{name: "own verified wildcard covers a name", host: "a.mine.example.org",
		existing: []Claim{{Kind: Wildcard, Domain: "mine.example.org", Cluster: "b", Verified: true}},
		verified: true, mention: "*.mine.example.org"},
	{name: "own unverified wildcard covers nothing", host: "a.mine.example.org",
		existing: []Claim{{Kind: Wildcard, Domain: "mine.example.org", Cluster: "b"}},
		verified: false},
	{name: "own grant covers everything below", host: "*.x.granted.example.org",
		existing: []Claim{{Kind: Grant, Domain: "granted.example.org", Cluster: "b", Verified: true}},
		verified: true, mention: "grant"},
	{name: "own grant of the very name", host: "app.granted.example.org",
		existing: []Claim{{Kind: Grant, Domain: "app.granted.example.org", Cluster: "b", Verified: true}},
		verified: true, mention: "grant"},
	{name: "own subdomain of the base domain", host: "web.beta.apps.example.com", policy: base, verified: true},
	{name: "own subdomain itself", host: "beta.apps.example.com", policy: base, verified: true},
	{name: "wildcard of own subdomain", host: "*.beta.apps.example.com", policy: base, verified: true},
	{name: "another cluster's subdomain", host: "web.alpha.apps.example.com", policy: base, code: CodeForbidden, mention: "beta.apps.example.com"},
	{name: "the base domain itself", host: "apps.example.com", policy: base, code: CodeForbidden},
	{name: "a wildcard of the base domain", host: "*.apps.example.com", policy: base, code: CodeForbidden},
	{name: "a wildcard above the base domain", host: "*.example.com", policy: base, code: CodeForbidden},
	{name: "next to the base domain is custom", host: "shop.example.com", policy: base, verified: false},
	{name: "grant of a free domain", host: "example.net", grant: true, verified: true},
	{name: "grant over another's name", host: "example.net", grant: true,
		existing: []Claim{{Kind: Name, Domain: "a.example.net", Cluster: "a", Verified: true}},
		code:     CodeConflict},
	{name: "grant under another's wildcard", host: "x.example.net", grant: true,
		existing: []Claim{{Kind: Wildcard, Domain: "example.net", Cluster: "a", Verified: true}},
		code:     CodeConflict},
	{name: "grant of a public suffix", host: "co.uk", grant: true, code: CodeInvalid},
	{name: "grant over the base domain", host: "example.com", grant: true, policy: base, code: CodeForbidden},
}

func TestDecide(t *testing.T) {
	for _, tc := range decideCases {
		t.Run(tc.name, func(t *testing.T) {
			h, err := Normalize(tc.host)
			if err != nil {
				t.Fatal(err)
			}
			c := ClaimOf(h)
			if tc.grant {
				c = Claim{Kind: Grant, Domain: h}
			}
			pol := tc.policy
			if err := pol.Validate(); err != nil {
				t.Fatal(err)
			}
			d, err := pol.Decide(c, "b", "beta", tc.existing)
			if tc.code != "" {
				var re *RefusedError
				if !errors.As(err, &re) || re.Code != tc.code {
					t.Fatalf("Decide = %+v, %v; want refusal %q", d, err, tc.code)
				}
				if !strings.Contains(re.Message, tc.mention) {
					t.Errorf("message %q does not mention %q", re.Message, tc.mention)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decide: %v", err)
			}
			if d.Verified != tc.verified {
				t.Errorf("Verified = %v (%s), want %v", d.Verified, d.Reason, tc.verified)
			}
			if !strings.Contains(d.Reason, tc.mention) {
				t.Errorf("reason %q does not mention %q", d.Reason, tc.mention)
			}
		})
	}
}

// TestRelatedFindsEveryOverlap checks the store's look-up plan: every
// claim of the test tables that overlaps a claim is found by Related.
func TestRelatedFindsEveryOverlap(t *testing.T) {
	var all []Claim
	for _, tc := range decideCases {
		all = append(all, tc.existing...)
		if h, err := Normalize(tc.host); err == nil {
			all = append(all, ClaimOf(h), Claim{Kind: Grant, Domain: strings.TrimPrefix(h, "*.")})
		}
	}
	for _, c := range all {
		for _, e := range all {
			if Overlaps(c, e) && !found(c, e) {
				t.Errorf("Related(%v) misses overlapping %v", c, e)
			}
		}
	}
}

// found reports whether a store following Related(c) loads e.
func found(c, e Claim) bool {
	exact, desc := Related(c)
	stored := e.Hostname()
	if e.Kind == Grant {
		stored = e.Domain
	}
	for _, x := range exact {
		if x == stored {
			return true
		}
	}
	return desc != "" && below(strings.TrimPrefix(stored, "*."), desc) || desc != "" && e.Kind == Wildcard && e.Domain == desc
}

func TestPolicyValidate(t *testing.T) {
	for _, bad := range []string{"com", "*.apps.example.com", "a..b", "co.uk"} {
		p := Policy{BaseDomains: []string{bad}}
		if err := p.Validate(); err == nil {
			t.Errorf("base domain %q accepted", bad)
		}
	}
	p := Policy{BaseDomains: []string{"Apps.Example.com."}}
	if err := p.Validate(); err != nil || p.BaseDomains[0] != "apps.example.com" {
		t.Errorf("Validate = %v, %v", p.BaseDomains, err)
	}
}

func FuzzNormalize(f *testing.F) {
	for _, tc := range normalizeCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, in string) {
		h, err := Normalize(in)
		if err != nil {
			return
		}
		if len(h) > MaxLength {
			t.Fatalf("Normalize(%q) = %q, longer than %d", in, h, MaxLength)
		}
		if strings.ToLower(h) != h || strings.HasSuffix(h, ".") || strings.ContainsAny(h, ":/ _[]") {
			t.Fatalf("Normalize(%q) = %q is not canonical", in, h)
		}
		if strings.Contains(strings.TrimPrefix(h, "*."), "*") {
			t.Fatalf("Normalize(%q) = %q has a '*' past the first label", in, h)
		}
		again, err := Normalize(h)
		if err != nil || again != h {
			t.Fatalf("Normalize is not idempotent: %q -> %q -> %q, %v", in, h, again, err)
		}
	})
}

// FuzzDecide checks the invariants of the rules on arbitrary names: a claim
// another cluster's verified claim overlaps is always refused, one it does
// not overlap never for a conflict, and a claim always overlaps itself.
func FuzzDecide(f *testing.F) {
	for _, tc := range decideCases {
		for _, e := range tc.existing {
			f.Add(tc.host, e.Hostname(), e.Kind == Grant, tc.grant)
		}
		f.Add(tc.host, "example.com", false, tc.grant)
	}
	f.Fuzz(func(t *testing.T, claim, other string, otherGrant, grant bool) {
		h, err := Normalize(claim)
		if err != nil {
			return
		}
		o, err := Normalize(other)
		if err != nil {
			return
		}
		c := ClaimOf(h)
		if grant {
			c = Claim{Kind: Grant, Domain: strings.TrimPrefix(h, "*.")}
		}
		e := ClaimOf(o)
		if otherGrant {
			e = Claim{Kind: Grant, Domain: strings.TrimPrefix(o, "*.")}
		}
		e.Cluster, e.Verified = "a", true
		if !Overlaps(c, c) || Overlaps(c, e) != Overlaps(e, c) {
			t.Fatalf("Overlaps is not reflexive and symmetric on %v, %v", c, e)
		}
		if Overlaps(c, e) && !found(c, e) {
			t.Fatalf("Related(%v) misses overlapping %v", c, e)
		}
		if Overlaps(c, e) && ZoneKey(c) != ZoneKey(e) && !isPublicSuffix(c.Domain) && !isPublicSuffix(e.Domain) {
			t.Fatalf("overlapping %v and %v have zone keys %q and %q: the store would not serialise them", c, e, ZoneKey(c), ZoneKey(e))
		}
		_, err = Policy{}.Decide(c, "b", "beta", []Claim{e})
		var re *RefusedError
		isConflict := errors.As(err, &re) && re.Code == CodeConflict
		if Overlaps(c, e) && err == nil {
			t.Fatalf("%v was allowed over another cluster's %v", c, e)
		}
		if !Overlaps(c, e) && isConflict {
			t.Fatalf("%v refused for a conflict with %v, which it does not overlap: %v", c, e, err)
		}
	})
}
