package postgres

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/hostnames"
)

var _ controlplane.HostnameStore = (*DB)(nil)

// hostnameLockClass is the first key of the pg_advisory_xact_lock that
// serialises claims of one registrable domain ("pipe"); the second is the
// domain's hash. Overlapping claims always share a registrable domain, so
// the rules see every claim that could conflict with the one they judge.
const hostnameLockClass = 0x70697065

// lockZones takes the claim locks of the registrable domains of cs, in
// sorted order so that two transactions never wait on each other in a
// cycle.
func lockZones(ctx context.Context, tx pgx.Tx, cs []hostnames.Claim) error {
	zones := make([]string, 0, len(cs))
	for _, c := range cs {
		zones = append(zones, hostnames.ZoneKey(c))
	}
	for _, z := range uniqueSorted(zones) {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, hostnameLockClass, z); err != nil {
			return fmt.Errorf("lock hostnames of %s: %w", z, err)
		}
	}
	return nil
}

// relatedClaims loads every stored claim (hostnames and grants) that may
// overlap one of cs, as hostnames.Related describes.
func relatedClaims(ctx context.Context, tx pgx.Tx, cs []hostnames.Claim) ([]hostnames.Claim, error) {
	var exact, below []string
	for _, c := range cs {
		e, d := hostnames.Related(c)
		exact = append(exact, e...)
		if d != "" {
			below = append(below, d)
		}
	}
	exact, below = uniqueSorted(exact), uniqueSorted(below)
	var out []hostnames.Claim
	add := func(rows pgx.Rows, grant bool) error {
		var (
			name, cluster string
			verified      bool
		)
		_, err := pgx.ForEachRow(rows, []any{&name, &cluster, &verified}, func() error {
			c := hostnames.ClaimOf(name)
			if grant {
				c = hostnames.Claim{Kind: hostnames.Grant, Domain: name}
			}
			c.Cluster, c.Verified = cluster, verified
			out = append(out, c)
			return nil
		})
		return err
	}
	rows, err := tx.Query(ctx, `SELECT hostname, cluster_uuid::text, verified_at IS NOT NULL FROM hostnames WHERE hostname = ANY($1::text[])`, exact)
	if err == nil {
		err = add(rows, false)
	}
	if err != nil {
		return nil, fmt.Errorf("load hostname claims: %w", err)
	}
	// Names are validated (letters, digits, '-', '.', '*'), so they hold no
	// LIKE wildcard of their own.
	for _, d := range below {
		rows, err := tx.Query(ctx, `SELECT hostname, cluster_uuid::text, verified_at IS NOT NULL FROM hostnames WHERE reverse(hostname) LIKE $1`, reverse(d)+".%")
		if err == nil {
			err = add(rows, false)
		}
		if err != nil {
			return nil, fmt.Errorf("load hostname claims below %s: %w", d, err)
		}
	}
	patterns := make([]string, len(below))
	for i, d := range below {
		patterns[i] = reverse(d) + ".%"
	}
	rows, err = tx.Query(ctx, `SELECT domain, cluster_uuid::text, true FROM domain_grants
		WHERE domain = ANY($1::text[]) OR reverse(domain) LIKE ANY($2::text[])`, exact, patterns)
	if err == nil {
		err = add(rows, true)
	}
	if err != nil {
		return nil, fmt.Errorf("load domain grants: %w", err)
	}
	return out, nil
}

func reverse(s string) string {
	b := []byte(s)
	slices.Reverse(b)
	return string(b)
}

// refusal turns a hostnames.RefusedError into the API's error.
func refusal(err error) error {
	var re *hostnames.RefusedError
	if !errors.As(err, &re) {
		return err
	}
	code := controlplane.EINVALID
	switch re.Code {
	case hostnames.CodeConflict:
		code = controlplane.ECONFLICT
	case hostnames.CodeForbidden:
		code = controlplane.EFORBIDDEN
	}
	return controlplane.Errorf(code, "%s", re.Message)
}

func clusterName(ctx context.Context, tx pgx.Tx, uuid string) (string, error) {
	var name string
	if err := tx.QueryRow(ctx, `SELECT name FROM clusters WHERE uuid = $1`, uuid).Scan(&name); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return "", clusterNotFound(uuid)
		}
		return "", clusterErr(err, uuid, "load cluster")
	}
	return name, nil
}

// claimHostnames claims every hostname of hosts (normalised) for cluster,
// whose row the caller has locked, under the rules of db.Ownership: a name
// the rules refuse fails the whole claim (ECONFLICT naming the other
// cluster's name, EFORBIDDEN, EINVALID); the others are stored, verified or
// pending. Names the cluster already holds keep their state.
func (db *DB) claimHostnames(ctx context.Context, tx pgx.Tx, cluster string, hosts []string) error {
	if len(hosts) == 0 {
		return nil
	}
	sorted := uniqueSorted(append([]string(nil), hosts...))
	cs := make([]hostnames.Claim, len(sorted))
	for i, h := range sorted {
		cs[i] = hostnames.ClaimOf(h)
	}
	name, err := clusterName(ctx, tx, cluster)
	if err != nil {
		return err
	}
	if err := lockZones(ctx, tx, cs); err != nil {
		return err
	}
	existing, err := relatedClaims(ctx, tx, cs)
	if err != nil {
		return err
	}
	now := db.now()
	var verified []hostnames.Claim
	for i, c := range cs {
		held := false
		for _, e := range existing {
			if e.Cluster == cluster && e.Kind != hostnames.Grant && e.Hostname() == sorted[i] && e.Verified {
				held = true
			}
		}
		if held {
			continue
		}
		d, err := db.Ownership.Decide(c, cluster, name, existing)
		if err != nil {
			return refusal(err)
		}
		var verifiedAt any
		if d.Verified {
			verifiedAt = now
			verified = append(verified, c)
		}
		challenge, err := newChallenge()
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO hostnames (hostname, cluster_uuid, verified_at, verified_by, challenge, created_at)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (hostname, cluster_uuid) DO UPDATE SET
				verified_at = coalesce(hostnames.verified_at, EXCLUDED.verified_at),
				verified_by = CASE WHEN hostnames.verified_at IS NULL THEN EXCLUDED.verified_by ELSE hostnames.verified_by END,
				challenge = CASE WHEN hostnames.challenge = '' THEN EXCLUDED.challenge ELSE hostnames.challenge END`,
			sorted[i], cluster, verifiedAt, d.Reason, challenge, now); err != nil {
			if pgCode(err) == codeUniqueViolation {
				return controlplane.Errorf(controlplane.ECONFLICT, "%s is registered to another cluster", sorted[i])
			}
			return clusterErr(err, cluster, "claim hostname "+sorted[i])
		}
		existing = append(existing, hostnames.Claim{Kind: c.Kind, Domain: c.Domain, Cluster: cluster, Verified: d.Verified})
	}
	return dropOverlappedPending(ctx, tx, cluster, verified, existing)
}

// dropOverlappedPending deletes other clusters' unverified claims that a
// newly verified claim of cluster overlaps (they could never be verified
// now), with their routes, and announces the change to each such cluster.
func dropOverlappedPending(ctx context.Context, tx pgx.Tx, cluster string, verified, existing []hostnames.Claim) error {
	drop := map[string][]string{}
	for _, e := range existing {
		if e.Cluster == cluster || e.Verified || e.Kind == hostnames.Grant {
			continue
		}
		for _, v := range verified {
			if hostnames.Overlaps(v, e) {
				drop[e.Cluster] = append(drop[e.Cluster], e.Hostname())
				break
			}
		}
	}
	for other, names := range drop {
		names = uniqueSorted(names)
		if _, err := tx.Exec(ctx, `DELETE FROM hostnames WHERE cluster_uuid = $1 AND hostname = ANY($2::text[]) AND verified_at IS NULL`, other, names); err != nil {
			return fmt.Errorf("drop overlapped claims of %s: %w", other, err)
		}
		if err := notify(ctx, tx, other, names); err != nil {
			return err
		}
	}
	return nil
}

// newChallenge returns a fresh TXT record value.
func newChallenge() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("make challenge: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

const hostnameColumns = `hostname, cluster_uuid::text, verified_at, verified_by, challenge, checked_at, check_error, created_at`

func scanHostname(row pgx.CollectableRow) (controlplane.Hostname, error) {
	var (
		h                  controlplane.Hostname
		verified, checked  *time.Time
		challenge, checkBy string
	)
	err := row.Scan(&h.Hostname, &h.ClusterUUID, &verified, &checkBy, &challenge, &checked, &h.CheckError, &h.CreatedAt)
	if verified != nil {
		h.Verified, h.VerifiedAt, h.VerifiedBy = true, *verified, checkBy
	} else {
		c := hostnames.ClaimOf(h.Hostname)
		h.TXTName, h.TXTValue = c.ChallengeName(), challenge
	}
	if checked != nil {
		h.CheckedAt = *checked
	}
	return h, err
}

// Hostnames implements controlplane.HostnameStore.
func (db *DB) Hostnames(ctx context.Context, clusterUUID string) ([]controlplane.Hostname, error) {
	var (
		rows pgx.Rows
		err  error
	)
	if clusterUUID == "" {
		rows, err = db.pool.Query(ctx, `SELECT `+hostnameColumns+` FROM hostnames ORDER BY hostname, cluster_uuid`)
	} else {
		rows, err = db.pool.Query(ctx, `SELECT `+hostnameColumns+` FROM hostnames WHERE cluster_uuid = $1 ORDER BY hostname`, clusterUUID)
	}
	if err != nil {
		return nil, listErr(err, "list hostnames")
	}
	hs, err := pgx.CollectRows(rows, scanHostname)
	if err != nil {
		return nil, listErr(err, "list hostnames")
	}
	return hs, nil
}

// PendingHostnames implements controlplane.HostnameStore.
func (db *DB) PendingHostnames(ctx context.Context, limit int) ([]controlplane.Hostname, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+hostnameColumns+` FROM hostnames
		WHERE verified_at IS NULL ORDER BY checked_at NULLS FIRST, hostname LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("list pending hostnames: %w", err)
	}
	hs, err := pgx.CollectRows(rows, scanHostname)
	if err != nil {
		return nil, fmt.Errorf("list pending hostnames: %w", err)
	}
	return hs, nil
}

// RecordHostnameCheck implements controlplane.HostnameStore.
func (db *DB) RecordHostnameCheck(ctx context.Context, clusterUUID, hostname, finding string) error {
	if len(finding) > 500 {
		finding = finding[:500]
	}
	_, err := db.pool.Exec(ctx, `UPDATE hostnames SET checked_at = $3, check_error = $4 WHERE hostname = $1 AND cluster_uuid = $2`,
		hostname, clusterUUID, db.now(), finding)
	if err != nil {
		return clusterErr(err, clusterUUID, "record hostname check")
	}
	return nil
}

// VerifyHostname implements controlplane.HostnameStore.
func (db *DB) VerifyHostname(ctx context.Context, clusterUUID, hostname, by string) error {
	h, err := hostnames.Normalize(hostname)
	if err != nil {
		return controlplane.Errorf(controlplane.EINVALID, "%s", err.Error())
	}
	return db.inTx(ctx, func(tx pgx.Tx) error {
		if err := lockCluster(ctx, tx, clusterUUID); err != nil {
			return err
		}
		c := hostnames.ClaimOf(h)
		c.Cluster = clusterUUID
		if err := lockZones(ctx, tx, []hostnames.Claim{c}); err != nil {
			return err
		}
		existing, err := relatedClaims(ctx, tx, []hostnames.Claim{c})
		if err != nil {
			return err
		}
		found := false
		for _, e := range existing {
			switch {
			case e.Cluster == clusterUUID && e.Kind != hostnames.Grant && e.Hostname() == h:
				found = true
				if e.Verified {
					return nil
				}
			case e.Cluster != clusterUUID && (e.Verified || e.Kind == hostnames.Grant) && hostnames.Overlaps(c, e):
				return refusal(&hostnames.RefusedError{Code: hostnames.CodeConflict,
					Message: fmt.Sprintf("%s overlaps %s, which another cluster verified first", h, e.Hostname())})
			}
		}
		if !found {
			return controlplane.Errorf(controlplane.ENOTFOUND, "cluster %s has no claim on %s", clusterUUID, h)
		}
		if _, err := tx.Exec(ctx, `UPDATE hostnames SET verified_at = $3, verified_by = $4, checked_at = $3, check_error = ''
			WHERE hostname = $1 AND cluster_uuid = $2`, h, clusterUUID, db.now(), by); err != nil {
			if pgCode(err) == codeUniqueViolation {
				return controlplane.Errorf(controlplane.ECONFLICT, "%s is registered to another cluster", h)
			}
			return fmt.Errorf("verify %s: %w", h, err)
		}
		c.Verified = true
		if err := dropOverlappedPending(ctx, tx, clusterUUID, []hostnames.Claim{c}, existing); err != nil {
			return err
		}
		return notify(ctx, tx, clusterUUID, []string{h})
	})
}

// GrantDomain implements controlplane.HostnameStore. The cluster's pending
// claims the grant covers become verified at once.
func (db *DB) GrantDomain(ctx context.Context, clusterUUID, domain string) error {
	d, err := hostnames.Normalize(domain)
	if err != nil {
		return controlplane.Errorf(controlplane.EINVALID, "%s", err.Error())
	}
	if strings.HasPrefix(d, "*.") {
		return controlplane.Errorf(controlplane.EINVALID, "grant the domain %s itself: a grant covers it and every name below it", strings.TrimPrefix(d, "*."))
	}
	return db.inTx(ctx, func(tx pgx.Tx) error {
		if err := lockCluster(ctx, tx, clusterUUID); err != nil {
			return err
		}
		name, err := clusterName(ctx, tx, clusterUUID)
		if err != nil {
			return err
		}
		g := hostnames.Claim{Kind: hostnames.Grant, Domain: d, Cluster: clusterUUID, Verified: true}
		if err := lockZones(ctx, tx, []hostnames.Claim{g}); err != nil {
			return err
		}
		existing, err := relatedClaims(ctx, tx, []hostnames.Claim{g})
		if err != nil {
			return err
		}
		if _, err := db.Ownership.Decide(g, clusterUUID, name, existing); err != nil {
			return refusal(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO domain_grants (domain, cluster_uuid, created_at) VALUES ($1, $2, $3)
			ON CONFLICT (domain) DO NOTHING`, d, clusterUUID, db.now()); err != nil {
			return clusterErr(err, clusterUUID, "grant "+d)
		}
		var covered []string
		for _, e := range existing {
			if e.Cluster == clusterUUID && !e.Verified && e.Kind != hostnames.Grant && hostnames.Covers(g, e) {
				covered = append(covered, e.Hostname())
			}
		}
		if len(covered) > 0 {
			if _, err := tx.Exec(ctx, `UPDATE hostnames SET verified_at = $3, verified_by = $4, check_error = ''
				WHERE cluster_uuid = $1 AND hostname = ANY($2::text[]) AND verified_at IS NULL`,
				clusterUUID, covered, db.now(), "domain grant "+d); err != nil {
				return fmt.Errorf("verify names under %s: %w", d, err)
			}
		}
		if err := dropOverlappedPending(ctx, tx, clusterUUID, []hostnames.Claim{g}, existing); err != nil {
			return err
		}
		return notify(ctx, tx, clusterUUID, covered)
	})
}

// RevokeGrant implements controlplane.HostnameStore.
func (db *DB) RevokeGrant(ctx context.Context, domain string) error {
	d, err := hostnames.Normalize(domain)
	if err != nil {
		return controlplane.Errorf(controlplane.EINVALID, "%s", err.Error())
	}
	return db.inTx(ctx, func(tx pgx.Tx) error {
		var cluster string
		err := tx.QueryRow(ctx, `DELETE FROM domain_grants WHERE domain = $1 RETURNING cluster_uuid::text`, d).Scan(&cluster)
		if errors.Is(err, pgx.ErrNoRows) {
			return controlplane.Errorf(controlplane.ENOTFOUND, "no grant of %s", d)
		}
		if err != nil {
			return fmt.Errorf("revoke grant of %s: %w", d, err)
		}
		if _, err := tx.Exec(ctx, `UPDATE hostnames SET verified_at = NULL, verified_by = ''
			WHERE cluster_uuid = $1 AND verified_by = $2`, cluster, "domain grant "+d); err != nil {
			return fmt.Errorf("revoke grant of %s: %w", d, err)
		}
		return notify(ctx, tx, cluster, nil)
	})
}

// Grants implements controlplane.HostnameStore.
func (db *DB) Grants(ctx context.Context) ([]controlplane.DomainGrant, error) {
	rows, err := db.pool.Query(ctx, `SELECT domain, cluster_uuid::text, created_at FROM domain_grants ORDER BY domain`)
	if err != nil {
		return nil, fmt.Errorf("list grants: %w", err)
	}
	gs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (controlplane.DomainGrant, error) {
		var g controlplane.DomainGrant
		err := row.Scan(&g.Domain, &g.ClusterUUID, &g.CreatedAt)
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("list grants: %w", err)
	}
	return gs, nil
}
