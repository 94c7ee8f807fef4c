-- What an agent says about itself when it registers, beyond its id and
-- versions: name, hostname, server IP, region, cloud provider, labels,
-- metadata, features and the host's ports and specs, as a JSON object. The
-- control plane bounds it (64 KiB of JSON, see controlplane.AgentReportOf)
-- and never puts a credential in it: the Kubernetes service token PipeOps
-- agents offer is discarded. Clusters registered before this column existed
-- get an empty object, filled in at their agent's next registration.
ALTER TABLE clusters ADD COLUMN agent_info jsonb NOT NULL DEFAULT '{}';
