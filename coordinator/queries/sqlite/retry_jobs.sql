-- Re-queues the sweep's failed jobs (all: $2 NULL, or those of trial $2 and its dense job); $3: the
-- sweep is paused. A parent that is failed now is itself re-queued (or stays failed): never
-- 'succeeded' within this statement, so the CASE reads the same on both backends.
UPDATE jobs SET state = CASE WHEN parent_job_id IS NULL
                               OR EXISTS (SELECT 1 FROM jobs p WHERE p.id = jobs.parent_job_id AND p.state = 'succeeded')
                             THEN 'ready' ELSE 'blocked' END,
       error_count = 0, last_error = NULL, finished_at = NULL, worker_id = NULL, lease_expires_at = NULL,
       progress = 0, eta_seconds = NULL, paused = $3
 WHERE sweep_id = $1 AND state = 'failed'
   AND ($2 IS NULL OR trial_id = $2 OR id = (SELECT t.dense_job_id FROM trials t WHERE t.id = $2))
RETURNING id, state, attempt
