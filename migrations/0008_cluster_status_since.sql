-- When a cluster's status last changed: "connected since" or "disconnected
-- since", as the console shows it. Set by every write of a status that
-- differs from the stored one; clusters that existed before this column get
-- the time of their last update, the best estimate there is.
ALTER TABLE clusters ADD COLUMN status_since timestamptz;
UPDATE clusters SET status_since = updated_at;
ALTER TABLE clusters ALTER COLUMN status_since SET NOT NULL;

-- Which gateway holds (or last held) the cluster's agent session, by its
-- GATEWAY_ID; empty until a gateway has written the cluster's state.
ALTER TABLE clusters ADD COLUMN gateway text NOT NULL DEFAULT '';
