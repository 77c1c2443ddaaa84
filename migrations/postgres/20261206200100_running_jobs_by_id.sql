-- The running jobs, by id, instead of by lease expiry.
--
-- Every lease check looks a job up by id and state (`WHERE id = $1 AND attempt = $2 AND state =
-- 'running'`: heartbeats, progress, uploads, completions, releases). The generic plan of those
-- statements preferred jobs_running_lease (lease_expires_at) WHERE state = 'running' to the
-- primary key, because its predicate matched and it looked tiny, and then read it whole with the
-- id as a filter: every running job and every dead entry claims and completions left in it. At 1M
-- queued jobs that was 216 buffers a call for the upload's lease check (0.36 ms, against 0.04 ms at
-- 10k), growing with the number of running jobs. Keyed by id, the same index answers a lookup with
-- one descent, and lease_expires_at is no longer indexed at all, so a heartbeat (which changes only
-- the lease) is a HOT update that writes no index entry. The reaper's expiry scan reads this index
-- whole, once a pass: it holds only the running jobs.
--
-- SQLite keeps its index: its planner looks a row up by rowid whenever the id is given.
DROP INDEX jobs_running_lease;
CREATE INDEX jobs_running ON jobs (id) WHERE state = 'running';
