-- Hostname ownership: a hostname routes only once its cluster has shown it
-- may use it (a name under its own subdomain of a platform base domain, a
-- domain an operator granted it, or a custom domain proven by a DNS TXT
-- record), and only one cluster may hold overlapping verified names. The
-- rules live in Go (controlplane/hostnames); this schema keeps their state.

-- Several clusters may claim one hostname while unverified (a claim alone
-- must not let anyone squat a name); only one may hold it verified.
ALTER TABLE routes DROP CONSTRAINT routes_hostname_fkey;
ALTER TABLE routes DROP CONSTRAINT routes_pkey;
ALTER TABLE hostnames DROP CONSTRAINT hostnames_pkey;
ALTER TABLE hostnames ADD CONSTRAINT hostnames_pkey PRIMARY KEY (hostname, cluster_uuid);
ALTER TABLE hostnames DROP CONSTRAINT hostnames_hostname_cluster_key;
ALTER TABLE routes ADD CONSTRAINT routes_pkey PRIMARY KEY (hostname, path, cluster_uuid);
ALTER TABLE routes ADD CONSTRAINT routes_hostname_fkey FOREIGN KEY (hostname, cluster_uuid)
	REFERENCES hostnames (hostname, cluster_uuid) ON DELETE CASCADE;

ALTER TABLE hostnames
	-- NULL until verified; routes of an unverified hostname are stored and
	-- not served.
	ADD COLUMN verified_at timestamptz,
	-- Why it is verified (base domain, grant, DNS TXT, ...), or how to.
	ADD COLUMN verified_by text NOT NULL DEFAULT '',
	-- The value the TXT record at _pipeops-challenge.<domain> must hold.
	ADD COLUMN challenge text NOT NULL DEFAULT '',
	ADD COLUMN created_at timestamptz NOT NULL DEFAULT now(),
	-- The last DNS check and what it found, for the operator and the agent.
	ADD COLUMN checked_at timestamptz,
	ADD COLUMN check_error text NOT NULL DEFAULT '';

-- Names routed before ownership was checked keep routing: an upgrade must
-- not take sites offline. `pipeops-controlplane hostname list` shows them
-- as "existing".
UPDATE hostnames SET verified_at = now(), verified_by = 'existing before ownership checks';

CREATE UNIQUE INDEX hostnames_verified_key ON hostnames (hostname) WHERE verified_at IS NOT NULL;
-- Finds the names below a domain (a wildcard's or a grant's) by prefix of the
-- reversed name.
CREATE INDEX hostnames_reversed_idx ON hostnames (reverse(hostname) text_pattern_ops);
CREATE INDEX hostnames_pending_idx ON hostnames (checked_at NULLS FIRST) WHERE verified_at IS NULL;

-- An operator's statement that a cluster owns a domain and every name below
-- it, without a DNS challenge.
CREATE TABLE domain_grants (
	domain       text        NOT NULL,
	cluster_uuid uuid        NOT NULL,
	created_at   timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT domain_grants_pkey PRIMARY KEY (domain),
	CONSTRAINT domain_grants_cluster_fkey FOREIGN KEY (cluster_uuid)
		REFERENCES clusters (uuid) ON DELETE CASCADE,
	CONSTRAINT domain_grants_domain_check CHECK (domain <> '' AND domain = lower(domain))
);
CREATE INDEX domain_grants_reversed_idx ON domain_grants (reverse(domain) text_pattern_ops);

-- Tokens are checked against their record: the issuer they were signed
-- with is part of it. Tokens issued before this column existed carry no
-- issuer claim, and their record says so ('').
ALTER TABLE tokens ADD COLUMN issuer text NOT NULL DEFAULT '';
