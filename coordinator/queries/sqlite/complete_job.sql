UPDATE jobs SET state = 'succeeded', progress = 1, eta_seconds = 0, finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), lease_expires_at = NULL
 WHERE id = $1 AND attempt = $2 AND state = 'running'
RETURNING sweep_id, trial_id
