-- The last transaction of a cancel, after stop_running_jobs.sql: the few jobs that became ready
-- behind the chunks (children of a job that completed meanwhile). The state list is the partial
-- index's (jobs_open_by_sweep), so this reads only the sweep's open jobs, not all of them; none
-- is running any more.
UPDATE jobs SET state = 'cancelled', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
 WHERE sweep_id = $1 AND state IN ('blocked', 'ready', 'running')
