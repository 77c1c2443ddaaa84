-- Twins in flight (issue 9, failure 10): a ready job waits while a job with the same content hash
-- runs (or is ready with a lower id), and is marked reused when that one succeeds. Both the
-- claim's check and the completion's lookup go through this index.
CREATE INDEX jobs_open_by_hash ON jobs (content_hash) WHERE state IN ('ready', 'running');
