-- Up to $4 jobs of sweep $1 (of state $2, or all) with ids above $3, by id.
SELECT id, sweep_id, trial_id, kind, seed, metric, rate, level, parent_job_id, dense_job_id,
       state, attempt, worker_id, error_count, lost_count, last_error, content_hash, reused_from, progress,
       eta_seconds, lease_expires_at, control, bundle_id
  FROM jobs WHERE sweep_id = $1 AND ($2 IS NULL OR state = $2) AND id > $3 ORDER BY id LIMIT $4
