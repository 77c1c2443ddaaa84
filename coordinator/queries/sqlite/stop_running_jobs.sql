-- Ends the running attempts of a sweep's jobs: $2 = 'ready' (paused) or 'cancelled'. `+sweep_id`:
-- through jobs_running_lease (the running jobs of every sweep: a few per worker), not every job
-- of the sweep through jobs_by_sweep.
UPDATE jobs SET state = $2, worker_id = NULL, lease_expires_at = NULL,
       finished_at = CASE WHEN $2 = 'cancelled' THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') ELSE finished_at END
 WHERE +sweep_id = $1 AND state = 'running'
RETURNING id, attempt
