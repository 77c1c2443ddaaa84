-- Re-queues every job still leased to a worker id (counted as lost, as an expired lease is): the
-- process it was leased to is gone (its daemon registered again as a new process).
UPDATE jobs SET state = 'ready', lost_count = lost_count + 1, worker_id = NULL, lease_expires_at = NULL
 WHERE state = 'running' AND worker_id = $1
RETURNING id, attempt, sweep_id
