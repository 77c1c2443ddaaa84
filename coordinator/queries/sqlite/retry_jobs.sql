-- One chunk of a retry: re-queues the failed jobs of sweep $1 with ids in [$4, $5) (all: $2 NULL,
-- or those of trial $2 and its dense job); $3: the sweep is paused. `+sweep_id` keeps the planner
-- on the id range (see cancel_jobs_range.sql). Chunks go up the ids and a parent's id is below its
-- children's: a parent failed when the retry began was re-queued by an earlier chunk (or stays
-- failed), and is 'succeeded' here only if it completed since, when its child may well be ready.
UPDATE jobs SET state = CASE WHEN parent_job_id IS NULL
                               OR EXISTS (SELECT 1 FROM jobs p WHERE p.id = jobs.parent_job_id AND p.state = 'succeeded')
                             THEN 'ready' ELSE 'blocked' END,
       error_count = 0, last_error = NULL, finished_at = NULL, worker_id = NULL, lease_expires_at = NULL,
       progress = 0, eta_seconds = NULL, paused = $3
 WHERE id >= $4 AND id < $5 AND +sweep_id = $1 AND state = 'failed'
   AND ($2 IS NULL OR trial_id = $2 OR id = (SELECT t.dense_job_id FROM trials t WHERE t.id = $2))
RETURNING id, state, attempt
