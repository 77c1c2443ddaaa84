-- Ticket bundles: the other ready members of the bundles just claimed ($3: a JSON array of bundle
-- ids) for worker $1 under a lease of $2 seconds, in the claim's write transaction (claim.sql took
-- each bundle's lead). The twin rule and the exclusions are claim.sql's.
UPDATE jobs SET state = 'running', attempt = attempt + 1, worker_id = $1,
       lease_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', $2)),
       started_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), progress = 0, eta_seconds = NULL
 WHERE bundle_id IN (SELECT CAST(value AS INTEGER) FROM json_each($3))
   AND state = 'ready' AND NOT paused
   AND NOT EXISTS (SELECT 1 FROM jobs twin WHERE twin.content_hash = jobs.content_hash
                      AND (twin.state = 'running' OR (twin.state = 'ready' AND twin.id < jobs.id AND NOT twin.paused)))
   AND (jobs.error_count = 0 OR NOT EXISTS (SELECT 1 FROM job_exclusions x WHERE x.job_id = jobs.id AND x.worker_id = $1))
RETURNING id, sweep_id, trial_id, kind, seed, metric, rate, level, parent_job_id, dense_job_id,
       state, attempt, worker_id, error_count, lost_count, last_error, content_hash, reused_from, progress,
       eta_seconds, lease_expires_at, control, bundle_id
