-- The state list is the partial index's (jobs_open_by_sweep): one step down it.
SELECT EXISTS (SELECT 1 FROM jobs WHERE sweep_id = $1 AND state IN ('blocked', 'ready', 'running'))
