UPDATE jobs SET state = 'ready', worker_id = NULL, lease_expires_at = NULL
 WHERE id = $1 AND attempt = $2 AND state = 'running'
RETURNING sweep_id
