UPDATE jobs SET state = 'ready', lost_count = lost_count + 1, worker_id = NULL, lease_expires_at = NULL
 WHERE state = 'running' AND lease_expires_at < now()
RETURNING id, attempt, sweep_id
