-- The groups of the person a user or admin token names (its sub), recorded
-- like every other claim: a token is held to its record, so a holder of the
-- signing key cannot add a group (say, one bound to cluster-admin) to a
-- token the control plane issued. The agent is to impersonate the subject
-- with these groups. Tokens issued before this column existed carry no
-- groups claim, and get an empty array, which matches.
ALTER TABLE tokens ADD COLUMN groups text[] NOT NULL DEFAULT '{}';
