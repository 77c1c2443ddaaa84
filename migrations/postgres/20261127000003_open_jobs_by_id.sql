-- The "any open job left in this sweep?" probe runs on every completion batch. Ordered by id, it
-- scans backwards from the highest open id, which stays open the longest (claims go in id order),
-- instead of first stepping over the entries of every job finished since the last vacuum.
DROP INDEX jobs_open_by_sweep;
CREATE INDEX jobs_open_by_sweep ON jobs (sweep_id, id) WHERE state IN ('blocked', 'ready', 'running');
