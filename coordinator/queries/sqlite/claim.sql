-- Up to $2 ready jobs for worker $1 under a lease of $3 seconds, inside the caller's write
-- transaction (one claimer at a time). Waits for twins and skips exclusions as claim.sql on
-- Postgres does, and takes only a ticket bundle's lead (its other ready members follow with
-- claim_siblings.sql).
UPDATE jobs SET state = 'running', attempt = attempt + 1, worker_id = $1,
       lease_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', $3)),
       started_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), progress = 0, eta_seconds = NULL
 WHERE id IN (SELECT id FROM jobs
               WHERE state = 'ready' AND NOT paused
                 AND NOT EXISTS (SELECT 1 FROM jobs twin WHERE twin.content_hash = jobs.content_hash
                             AND (twin.state = 'running' OR (twin.state = 'ready' AND twin.id < jobs.id AND NOT twin.paused)))
                 AND (jobs.error_count = 0 OR NOT EXISTS (SELECT 1 FROM job_exclusions x WHERE x.job_id = jobs.id AND x.worker_id = $1))
                 AND (jobs.bundle_id IS NULL OR NOT EXISTS (SELECT 1 FROM jobs sib WHERE sib.bundle_id = jobs.bundle_id
                             AND sib.state = 'ready' AND NOT sib.paused AND sib.id < jobs.id))
               ORDER BY priority DESC, id LIMIT $2)
RETURNING id, sweep_id, trial_id, kind, seed, metric, rate, level, parent_job_id, dense_job_id,
       state, attempt, worker_id, error_count, lost_count, last_error, content_hash, reused_from, progress,
       eta_seconds, lease_expires_at, control, bundle_id
