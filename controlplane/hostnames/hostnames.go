// Package hostnames holds the rules of hostname ownership: which names a
// cluster may route, which of them it must first prove it controls, and which
// belong to someone else. The rules are pure functions over the claims the
// caller has loaded; the route store (controlplane/postgres) loads the claims
// that could overlap a new one, asks Decide, and stores the answer, under a
// lock that serialises claims of one registrable domain.
//
// A claim covers a set of names:
//
//   - a plain name (app.example.com) covers itself;
//   - a wildcard (*.example.com) covers every name below example.com, at any
//     depth (a.example.com, b.a.example.com, *.a.example.com), but not
//     example.com itself;
//   - a domain grant (an operator's "cluster X owns example.com") covers the
//     domain and every name below it.
//
// Two claims overlap when their sets share a name. Only one cluster may hold
// overlapping verified claims; unverified claims hold nothing, so that
// nobody can squat a name by registering it first.
//
// A cluster's claim is verified at once when the cluster already holds a
// verified claim or grant that covers it, or when it lies under the cluster's
// own subdomain of a platform base domain (cluster "prod" under base domain
// apps.example.com owns prod.apps.example.com and everything below it). Any
// other name is a custom domain, verified by a DNS TXT record at
// ChallengeName.
package hostnames

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// MaxLength is the longest name accepted, in its ASCII form (RFC 1035).
const MaxLength = 253

// ChallengePrefix is the label a custom domain's TXT record is published
// under: _pipeops-challenge.example.com for example.com and *.example.com.
const ChallengePrefix = "_pipeops-challenge."

// ErrInvalid is wrapped by every error of Normalize.
var ErrInvalid = errors.New("invalid hostname")

// Normalize returns the canonical form of a hostname or wildcard as it is
// stored and compared: lower case, internationalised labels in their ASCII
// (punycode) form, no trailing dot. It refuses anything else that is not a
// DNS name, or "*." and one: ports, IP addresses, empty labels, labels over
// 63 characters, underscores, a "*" anywhere but as the whole first label.
func Normalize(raw string) (string, error) {
	h := strings.TrimSuffix(raw, ".")
	if h == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalid)
	}
	if len(h) > 4*MaxLength {
		// Bound the IDNA work before doing any: no valid name is this long
		// in any form.
		return "", fmt.Errorf("%w: %d bytes is longer than %d", ErrInvalid, len(h), MaxLength)
	}
	wild := strings.HasPrefix(h, "*.")
	name := strings.TrimPrefix(h, "*.")
	ascii, err := idna.Lookup.ToASCII(name)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrInvalid, raw, err)
	}
	ascii = strings.ToLower(ascii)
	// An input IDNA maps but would not accept back (invalid UTF-8 becomes
	// U+FFFD, which it encodes) is refused: a stored name must normalise to
	// itself.
	if !utf8.ValidString(name) {
		return "", fmt.Errorf("%w: %q is not UTF-8", ErrInvalid, raw)
	}
	if again, err := idna.Lookup.ToASCII(ascii); err != nil || again != ascii {
		return "", fmt.Errorf("%w: %q has no stable ASCII form", ErrInvalid, raw)
	}
	if wild {
		ascii = "*." + ascii
	}
	if len(ascii) > MaxLength {
		return "", fmt.Errorf("%w: %q is %d characters, longer than %d", ErrInvalid, raw, len(ascii), MaxLength)
	}
	labels := strings.Split(strings.TrimPrefix(ascii, "*."), ".")
	for _, l := range labels {
		if !validLabel(l) {
			return "", fmt.Errorf("%w: %q is not a DNS name (or \"*.\" and one)", ErrInvalid, raw)
		}
	}
	if allDigits(labels[len(labels)-1]) {
		return "", fmt.Errorf("%w: %q looks like an IP address, not a DNS name", ErrInvalid, raw)
	}
	return ascii, nil
}

// validLabel reports whether s is an LDH label: 1-63 lower-case letters,
// digits and inner hyphens.
func validLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// Kind says which set of names a claim covers.
type Kind int

const (
	// Name is a route's plain hostname: itself only.
	Name Kind = iota
	// Wildcard is a route's "*.domain": every name below the domain.
	Wildcard
	// Grant is an operator's domain grant: the domain and every name below.
	Grant
)

// Claim is one cluster's hold on a set of names. Domain is normalised and
// has no "*." prefix: the wildcard *.example.com is {Wildcard,
// "example.com"}.
type Claim struct {
	Kind     Kind
	Domain   string
	Cluster  string // the cluster's UUID
	Verified bool   // grants are always verified
}

// ClaimOf returns the claim a route hostname makes; h must be normalised.
func ClaimOf(h string) Claim {
	if d, ok := strings.CutPrefix(h, "*."); ok {
		return Claim{Kind: Wildcard, Domain: d}
	}
	return Claim{Kind: Name, Domain: h}
}

// Hostname is the claim as a route hostname or grant domain is written.
func (c Claim) Hostname() string {
	if c.Kind == Wildcard {
		return "*." + c.Domain
	}
	return c.Domain
}

// ChallengeName is where the TXT record proving control of c's domain is
// looked up.
func (c Claim) ChallengeName() string { return ChallengePrefix + c.Domain }

// below reports whether name lies strictly below domain.
func below(name, domain string) bool {
	return len(name) > len(domain)+1 && strings.HasSuffix(name, domain) && name[len(name)-len(domain)-1] == '.'
}

// contains reports whether c's set contains the name n (a plain name).
func (c Claim) contains(n string) bool {
	switch c.Kind {
	case Name:
		return n == c.Domain
	case Wildcard:
		return below(n, c.Domain)
	default:
		return n == c.Domain || below(n, c.Domain)
	}
}

// Overlaps reports whether a and b share a name.
func Overlaps(a, b Claim) bool {
	switch {
	case a.Kind == Name:
		return b.contains(a.Domain)
	case b.Kind == Name:
		return a.contains(b.Domain)
	}
	// Both are subtrees (a grant is its domain plus a subtree): they share
	// a name when one's domain is within the other's set, or the domains
	// are equal.
	return a.Domain == b.Domain || a.contains(b.Domain) || b.contains(a.Domain) ||
		below(a.Domain, b.Domain) || below(b.Domain, a.Domain)
}

// Covers reports whether every name of inner is also a name of outer.
func Covers(outer, inner Claim) bool {
	switch outer.Kind {
	case Name:
		return inner.Kind == Name && inner.Domain == outer.Domain
	case Wildcard:
		// Below the domain; or the same wildcard, whose set is the same.
		return below(inner.Domain, outer.Domain) || inner.Kind == Wildcard && inner.Domain == outer.Domain
	default:
		return inner.Domain == outer.Domain || below(inner.Domain, outer.Domain)
	}
}

// ZoneKey names the registrable domain (public suffix plus one label) of a
// claim. Claims that overlap always share it, so the store serialises claims
// by locking it.
func ZoneKey(c Claim) string {
	if z, err := publicsuffix.EffectiveTLDPlusOne(c.Domain); err == nil {
		return z
	}
	return c.Domain
}

// isPublicSuffix reports whether d is a public suffix ("com", "co.uk", or any
// single label, which the default rule makes one).
func isPublicSuffix(d string) bool {
	s, _ := publicsuffix.PublicSuffix(d)
	return s == d
}

// Policy is the operator's part of the rules.
type Policy struct {
	// BaseDomains are the domains the platform hands out: cluster "prod"
	// owns prod.<base> and every name below it, and no cluster may claim
	// anything else at or under a base domain. Normalised, no "*.".
	BaseDomains []string
	// TrustUnverified makes every custom domain verified at once, skipping
	// the DNS challenge: for deployments where every cluster belongs to one
	// trusted owner. Ownership conflicts are still refused.
	TrustUnverified bool
}

// Validate checks and normalises the base domains.
func (p *Policy) Validate() error {
	for i, b := range p.BaseDomains {
		n, err := Normalize(b)
		if err != nil {
			return fmt.Errorf("base domain %q: %w", b, err)
		}
		if strings.HasPrefix(n, "*.") {
			return fmt.Errorf("base domain %q: give the domain without \"*.\"", b)
		}
		if isPublicSuffix(n) {
			return fmt.Errorf("base domain %q is a public suffix", b)
		}
		p.BaseDomains[i] = n
	}
	return nil
}

// Subdomain is the name cluster clusterName owns under base, or "" when the
// cluster's name is not a DNS label.
func Subdomain(clusterName, base string) string {
	l := strings.ToLower(clusterName)
	if !validLabel(l) {
		return ""
	}
	return l + "." + base
}

// Decision is Decide's answer for a claim that may be stored.
type Decision struct {
	// Verified: the claim routes at once.
	Verified bool
	// Reason says why it is verified ("base domain", "grant", "covered by
	// *.example.com", "trusted") or why not yet ("custom domain").
	Reason string
}

// Error codes of a refusal, matching controlplane's error codes.
const (
	CodeInvalid   = "invalid"   // never valid for anyone
	CodeForbidden = "forbidden" // reserved by the platform's base domains
	CodeConflict  = "conflict"  // held by another cluster
)

// RefusedError is a claim Decide refuses.
type RefusedError struct {
	Code    string // CodeInvalid, CodeForbidden or CodeConflict
	Message string
}

func (e *RefusedError) Error() string { return e.Message }

func refuse(code, format string, args ...any) *RefusedError {
	return &RefusedError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Decide rules on cluster (UUID and name) claiming c, given existing: every
// stored claim that could overlap c (more is harmless; fewer is a bug). It
// returns the decision, or a *RefusedError.
func (p Policy) Decide(c Claim, cluster, clusterName string, existing []Claim) (Decision, error) {
	if c.Kind == Grant {
		return p.decideGrant(c, cluster, clusterName, existing)
	}
	if c.Kind == Name && isPublicSuffix(c.Domain) || c.Kind == Wildcard && isPublicSuffix(c.Domain) {
		return Decision{}, refuse(CodeInvalid, "%s is a public suffix (like com or co.uk): nobody may route it", c.Hostname())
	}
	for _, e := range existing {
		if e.Cluster != cluster && (e.Verified || e.Kind == Grant) && Overlaps(c, e) {
			return Decision{}, conflict(c, e)
		}
	}
	for _, base := range p.BaseDomains {
		baseSet := Claim{Kind: Grant, Domain: base}
		if !Overlaps(c, baseSet) {
			continue
		}
		own := Subdomain(clusterName, base)
		if own != "" && Covers(Claim{Kind: Grant, Domain: own}, c) {
			return Decision{Verified: true, Reason: "base domain " + own}, nil
		}
		if own == "" {
			return Decision{}, refuse(CodeForbidden, "%s is under the platform's base domain %s, whose names are handed out per cluster, and this cluster's name %q is not a DNS label", c.Hostname(), base, clusterName)
		}
		return Decision{}, refuse(CodeForbidden, "%s is under the platform's base domain %s, whose names are handed out per cluster: this cluster may use %s and names under it", c.Hostname(), base, own)
	}
	for _, e := range existing {
		if e.Cluster == cluster && (e.Kind == Grant || e.Verified && e.Hostname() != c.Hostname()) && Covers(e, c) {
			if e.Kind == Grant {
				return Decision{Verified: true, Reason: "domain grant " + e.Domain}, nil
			}
			return Decision{Verified: true, Reason: "covered by " + e.Hostname()}, nil
		}
	}
	if p.TrustUnverified {
		return Decision{Verified: true, Reason: "trusted (verification off)"}, nil
	}
	return Decision{Reason: "custom domain: publish the TXT record " + c.ChallengeName()}, nil
}

func (p Policy) decideGrant(c Claim, cluster, clusterName string, existing []Claim) (Decision, error) {
	if isPublicSuffix(c.Domain) {
		return Decision{}, refuse(CodeInvalid, "%s is a public suffix (like com or co.uk): it cannot be granted", c.Domain)
	}
	for _, base := range p.BaseDomains {
		if Overlaps(c, Claim{Kind: Grant, Domain: base}) {
			return Decision{}, refuse(CodeForbidden, "%s overlaps the platform's base domain %s, whose names are handed out per cluster by name", c.Domain, base)
		}
	}
	for _, e := range existing {
		if e.Cluster != cluster && (e.Verified || e.Kind == Grant) && Overlaps(c, e) {
			return Decision{}, conflict(c, e)
		}
	}
	return Decision{Verified: true, Reason: "domain grant"}, nil
}

func conflict(c, e Claim) *RefusedError {
	what := e.Hostname()
	switch {
	case e.Kind == Grant:
		what = "the domain " + e.Domain
	case e.Hostname() == c.Hostname():
		return refuse(CodeConflict, "hostname %q is registered to another cluster", c.Hostname())
	}
	if c.Kind != Name && Covers(c, e) {
		return refuse(CodeConflict, "%s would cover %s, which another cluster owns", c.Hostname(), what)
	}
	return refuse(CodeConflict, "%s is covered by %s, which another cluster owns", c.Hostname(), what)
}

// Related returns what a store must look up to find every claim that may
// overlap c: exact stored names (route hostnames and grant domains) to match,
// and a domain whose descendants must all be loaded ("" when none are
// needed). A plain name can only overlap itself and the wildcards and grants
// above it; a wildcard or grant also overlaps everything below its domain.
func Related(c Claim) (exact []string, descendantsOf string) {
	exact = append(exact, c.Domain, "*."+c.Domain)
	for d := c.Domain; ; {
		i := strings.IndexByte(d, '.')
		if i < 0 {
			break
		}
		d = d[i+1:]
		exact = append(exact, d, "*."+d)
	}
	if c.Kind != Name {
		descendantsOf = c.Domain
	}
	return exact, descendantsOf
}
