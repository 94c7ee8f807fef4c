-- Public traffic per cluster and hostname, one row per minute (minute is
-- its start, truncated by the gateway): what a console draws its charts of
-- the last hour from, with no Prometheus server. The gateways add their
-- counts into the rows every few seconds (INSERT ... ON CONFLICT DO UPDATE
-- with sums), so the row of a minute holds every gateway's traffic.
--
-- hostname is the matched route's (a wildcard route's "*.example.com", not
-- each visitor's made-up subdomain), so the rows per minute are bounded by
-- the routes.
--
-- errors counts responses of status 500 and above, which includes the
-- 502/503/504 a gateway answers itself when the upstream fails.
--
-- latency is a histogram of the time to serve each request: the counts of
-- requests at most 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000 and
-- 10000 ms, and of those slower (14 buckets, not cumulative). The bounds
-- are fixed in controlplane.TrafficBucketBounds: rows of different minutes
-- and gateways add up bucket by bucket, which is what lets p50 and p99 be
-- estimated over any set of them.
--
-- Deleting a cluster deletes its rows. The gateways delete rows older than
-- their TRAFFIC_RETENTION (default 24h), in batches: hence minute first in
-- the primary key.
CREATE TABLE traffic (
	minute       timestamptz NOT NULL,
	cluster_uuid uuid        NOT NULL,
	hostname     text        NOT NULL,
	requests     bigint      NOT NULL DEFAULT 0,
	errors       bigint      NOT NULL DEFAULT 0,
	bytes_in     bigint      NOT NULL DEFAULT 0,
	bytes_out    bigint      NOT NULL DEFAULT 0,
	latency      bigint[]    NOT NULL,
	CONSTRAINT traffic_pkey PRIMARY KEY (minute, cluster_uuid, hostname),
	CONSTRAINT traffic_cluster_fkey FOREIGN KEY (cluster_uuid)
		REFERENCES clusters (uuid) ON DELETE CASCADE,
	CONSTRAINT traffic_latency_check CHECK (array_ndims(latency) = 1 AND cardinality(latency) = 14),
	CONSTRAINT traffic_counts_check CHECK (requests >= 0 AND errors >= 0 AND errors <= requests
		AND bytes_in >= 0 AND bytes_out >= 0)
);
-- One cluster's last hour (or day), and the cascade when it is deleted.
CREATE INDEX traffic_cluster_uuid_minute_idx ON traffic (cluster_uuid, minute);
