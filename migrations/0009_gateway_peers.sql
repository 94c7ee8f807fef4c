-- Several gateways share one database. Each one records itself in
-- gateways (and keeps seen_at fresh while it runs), and records in
-- gateway_tunnels every cluster whose agent holds a tunnel to it, so that a
-- gateway without a tunnel to a cluster forwards the cluster's streams to
-- one that has. 0001's gateway_sessions (one gateway per cluster) was never
-- written and cannot say that several gateways hold one cluster.
DROP TABLE gateway_sessions;

CREATE TABLE gateways (
	id         text        NOT NULL,
	peer_url   text        NOT NULL,
	started_at timestamptz NOT NULL,
	seen_at    timestamptz NOT NULL,
	CONSTRAINT gateways_pkey PRIMARY KEY (id),
	CONSTRAINT gateways_id_check CHECK (id <> '')
);

-- One row per cluster and gateway; sessions counts the cluster's agent
-- sessions on that gateway that take new streams, draining those of a
-- gateway that is shutting down (used only when no other gateway has a
-- session to the cluster). k8s_http and impersonates are what the newest of
-- them said it supports, so that another gateway knows how to reach the
-- cluster's Kubernetes API through it. session_ids names the sessions that
-- take new streams, so that another gateway retires its links to one that
-- stopped (its agent drains).
CREATE TABLE gateway_tunnels (
	cluster_uuid uuid        NOT NULL,
	gateway_id   text        NOT NULL,
	sessions     integer     NOT NULL,
	draining     integer     NOT NULL,
	session_ids  text[]      NOT NULL,
	k8s_http     boolean     NOT NULL,
	impersonates boolean     NOT NULL,
	since        timestamptz NOT NULL,
	CONSTRAINT gateway_tunnels_pkey PRIMARY KEY (cluster_uuid, gateway_id),
	CONSTRAINT gateway_tunnels_cluster_fkey FOREIGN KEY (cluster_uuid)
		REFERENCES clusters (uuid) ON DELETE CASCADE,
	CONSTRAINT gateway_tunnels_gateway_fkey FOREIGN KEY (gateway_id)
		REFERENCES gateways (id) ON DELETE CASCADE,
	CONSTRAINT gateway_tunnels_sessions_check CHECK (sessions >= 0 AND draining >= 0 AND sessions + draining > 0)
);
CREATE INDEX gateway_tunnels_gateway_id_idx ON gateway_tunnels (gateway_id);
