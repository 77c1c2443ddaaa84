UPDATE jobs SET lease_expires_at = (now() + make_interval(secs => $4))
 WHERE id = $1 AND attempt = $2 AND state = 'running' AND worker_id = $3
