-- $3: 1 when the failure counts against the job's attempts; $5: 'ready' (retried) or 'failed'.
UPDATE jobs SET error_count = error_count + $3, last_error = $4, worker_id = NULL, lease_expires_at = NULL,
       state = $5, finished_at = CASE WHEN $5 = 'failed' THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') ELSE NULL END
 WHERE id = $1 AND attempt = $2
