UPDATE jobs SET lease_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', $4))
 WHERE id = $1 AND attempt = $2 AND state = 'running' AND worker_id = $3
