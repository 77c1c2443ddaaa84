-- The dependent that found the loss: back to $3 ('blocked' to wait, 'ready' to claim the new file,
-- 'failed' when the producer failed for good, $4 then its last_error).
UPDATE jobs SET state = $3, worker_id = NULL, lease_expires_at = NULL, progress = 0, eta_seconds = NULL,
       finished_at = CASE WHEN $3 = 'failed' THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') ELSE NULL END,
       last_error = CASE WHEN $3 = 'failed' THEN $4 ELSE last_error END
 WHERE id = $1 AND attempt = $2 AND state = 'running'
