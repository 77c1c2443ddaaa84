-- Ticket bundles (issue 10, item 3): level jobs that a worker claims together and trains as one
-- grouped network. The members of one bundle share bundle_id, the id of the bundle's first
-- member (so ids need no sequence of their own); NULL for a job that runs alone. Formed when the
-- sweep is submitted (coordinator/src/store/submit.rs, `SweepSpec::bundle_groups`).
ALTER TABLE jobs ADD COLUMN bundle_id BIGINT;

-- The claim looks up a claimed job's ready siblings by bundle_id.
CREATE INDEX jobs_bundle ON jobs (bundle_id) WHERE bundle_id IS NOT NULL;
