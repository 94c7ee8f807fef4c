-- The control plane's first schema: clusters, the hostnames they own, their
-- routes, issued tokens, signing keys and gateway sessions.
--
-- Timestamps the control plane reasons about (updated_at, expires_at, ...)
-- are written by the Go code from its own clock, so that tests can move time;
-- the column defaults only catch rows written by hand.

CREATE TABLE clusters (
	uuid               uuid        NOT NULL DEFAULT gen_random_uuid(),
	name               text        NOT NULL,
	status             text        NOT NULL DEFAULT 'pending',
	agent_id           text        NOT NULL DEFAULT '',
	agent_version      text        NOT NULL DEFAULT '',
	k8s_version        text        NOT NULL DEFAULT '',
	last_heartbeat     timestamptz,
	metadata           jsonb       NOT NULL DEFAULT '{}',
	public_endpoint    text        NOT NULL DEFAULT '',
	routing_mode       text        NOT NULL DEFAULT 'tunnel',
	ingress_controller jsonb,
	created_at         timestamptz NOT NULL DEFAULT now(),
	updated_at         timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT clusters_pkey PRIMARY KEY (uuid),
	CONSTRAINT clusters_name_key UNIQUE (name),
	CONSTRAINT clusters_name_check CHECK (name <> ''),
	CONSTRAINT clusters_status_check CHECK (status IN ('pending', 'connected', 'disconnected')),
	CONSTRAINT clusters_routing_mode_check CHECK (routing_mode IN ('tunnel', 'direct'))
);

-- A row here is a cluster's ownership of a hostname. The primary key is what
-- keeps two clusters from ever holding one hostname: of two racing claims
-- the second finds the first's row.
CREATE TABLE hostnames (
	hostname     text NOT NULL,
	cluster_uuid uuid NOT NULL,
	CONSTRAINT hostnames_pkey PRIMARY KEY (hostname),
	-- Target of routes' foreign key, so that a route can only name the
	-- cluster that owns its hostname.
	CONSTRAINT hostnames_hostname_cluster_key UNIQUE (hostname, cluster_uuid),
	CONSTRAINT hostnames_cluster_fkey FOREIGN KEY (cluster_uuid)
		REFERENCES clusters (uuid) ON DELETE CASCADE,
	CONSTRAINT hostnames_hostname_check CHECK (hostname <> '' AND hostname = lower(hostname))
);
CREATE INDEX hostnames_cluster_uuid_idx ON hostnames (cluster_uuid);

CREATE TABLE routes (
	hostname        text        NOT NULL,
	path            text        NOT NULL,
	path_type       text        NOT NULL,
	cluster_uuid    uuid        NOT NULL,
	namespace       text        NOT NULL DEFAULT '',
	service_name    text        NOT NULL DEFAULT '',
	service_port    integer     NOT NULL DEFAULT 0,
	ingress_name    text        NOT NULL DEFAULT '',
	tls             boolean     NOT NULL DEFAULT false,
	annotations     jsonb       NOT NULL DEFAULT '{}',
	public_endpoint text        NOT NULL DEFAULT '',
	routing_mode    text        NOT NULL DEFAULT 'tunnel',
	deployment_id   text        NOT NULL DEFAULT '',
	deployment_name text        NOT NULL DEFAULT '',
	updated_at      timestamptz NOT NULL DEFAULT now(),
	expires_at      timestamptz NOT NULL,
	CONSTRAINT routes_pkey PRIMARY KEY (hostname, path),
	-- Releasing a hostname (deleting its row) takes its routes with it.
	CONSTRAINT routes_hostname_fkey FOREIGN KEY (hostname, cluster_uuid)
		REFERENCES hostnames (hostname, cluster_uuid) ON DELETE CASCADE,
	CONSTRAINT routes_path_check CHECK (left(path, 1) = '/'),
	CONSTRAINT routes_path_type_check CHECK (path_type IN ('Prefix', 'Exact', 'ImplementationSpecific')),
	CONSTRAINT routes_service_port_check CHECK (service_port BETWEEN 0 AND 65535),
	CONSTRAINT routes_routing_mode_check CHECK (routing_mode IN ('tunnel', 'direct'))
);
CREATE INDEX routes_cluster_uuid_idx ON routes (cluster_uuid);
CREATE INDEX routes_expires_at_idx ON routes (expires_at);

-- Only the record of a token; the signed JWT is never stored. Deleting a
-- cluster deletes its agent tokens' records, and an unknown token counts as
-- revoked, so a deleted cluster's agent is locked out.
CREATE TABLE tokens (
	id           text        NOT NULL,
	kind         text        NOT NULL,
	cluster_uuid uuid,
	clusters     text[]      NOT NULL DEFAULT '{}',
	subject      text        NOT NULL DEFAULT '',
	issued_at    timestamptz NOT NULL,
	expires_at   timestamptz NOT NULL,
	revoked_at   timestamptz,
	CONSTRAINT tokens_pkey PRIMARY KEY (id),
	CONSTRAINT tokens_cluster_fkey FOREIGN KEY (cluster_uuid)
		REFERENCES clusters (uuid) ON DELETE CASCADE,
	CONSTRAINT tokens_id_check CHECK (id <> '')
);
CREATE INDEX tokens_cluster_uuid_idx ON tokens (cluster_uuid);

CREATE TABLE signing_keys (
	id          text        NOT NULL,
	algorithm   text        NOT NULL,
	private_pem bytea       NOT NULL,
	created_at  timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT signing_keys_pkey PRIMARY KEY (id),
	CONSTRAINT signing_keys_id_check CHECK (id <> '')
);

-- Which gateway replica holds a cluster's tunnel, so that any replica can
-- forward a request to the one that can serve it.
CREATE TABLE gateway_sessions (
	cluster_uuid uuid        NOT NULL,
	gateway_id   text        NOT NULL,
	connected_at timestamptz NOT NULL,
	CONSTRAINT gateway_sessions_pkey PRIMARY KEY (cluster_uuid),
	CONSTRAINT gateway_sessions_cluster_fkey FOREIGN KEY (cluster_uuid)
		REFERENCES clusters (uuid) ON DELETE CASCADE
);
