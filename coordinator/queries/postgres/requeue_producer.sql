-- The producer of a lost file runs again; $2 says why (its last_error).
UPDATE jobs SET state = 'ready', reused_from = NULL, worker_id = NULL, lease_expires_at = NULL, progress = 0,
       eta_seconds = NULL, finished_at = NULL, last_error = $2
 WHERE id = $1
