-- Who did what to which cluster's Kubernetes API through a gateway: one row
-- per finished request, written by the gateways in batches and listed by
-- `pipeops-controlplane audit list`. Never a body, never a token: the
-- token's id names it.
--
-- No foreign key to clusters: the record of what was done to a cluster must
-- outlive the cluster, so the cluster's name is kept beside its uuid.
--
-- The table is bounded by the gateways' pruning (AUDIT_RETENTION,
-- AUDIT_MAX_ROWS), which deletes by age, oldest first: hence the index on at.
CREATE TABLE k8s_audit (
	id           bigserial   NOT NULL,
	at           timestamptz NOT NULL,
	cluster_uuid text        NOT NULL DEFAULT '',
	cluster_name text        NOT NULL DEFAULT '',
	user_name    text        NOT NULL DEFAULT '',
	groups       text[]      NOT NULL DEFAULT '{}',
	token_id     text        NOT NULL DEFAULT '',
	-- The Kubernetes verb (get, list, watch, create, ..., exec, attach,
	-- portforward, proxy), or the lower-cased HTTP method of a non-resource
	-- path (/version, /apis, /openapi/v3).
	verb         text        NOT NULL,
	method       text        NOT NULL,
	-- The path only, never the query; a longer one is cut, with a marker,
	-- by controlplane.AuditEntry.Normalized.
	path         text        NOT NULL,
	status       integer     NOT NULL,
	bytes_in     bigint      NOT NULL DEFAULT 0,
	bytes_out    bigint      NOT NULL DEFAULT 0,
	duration_ms  bigint      NOT NULL DEFAULT 0,
	CONSTRAINT k8s_audit_pkey PRIMARY KEY (id),
	CONSTRAINT k8s_audit_path_check CHECK (octet_length(path) <= 2048)
);
CREATE INDEX k8s_audit_cluster_uuid_at_idx ON k8s_audit (cluster_uuid, at DESC);
-- A cluster is listed by name too: after it is deleted its name is all an
-- operator remembers, and rows of a deleted and re-created cluster share it.
CREATE INDEX k8s_audit_cluster_name_at_idx ON k8s_audit (cluster_name, at DESC);
CREATE INDEX k8s_audit_user_name_at_idx ON k8s_audit (user_name, at DESC);
CREATE INDEX k8s_audit_at_idx ON k8s_audit (at);
