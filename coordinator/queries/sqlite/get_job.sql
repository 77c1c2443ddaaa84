SELECT id, sweep_id, trial_id, kind, seed, metric, rate, level, parent_job_id, dense_job_id,
       state, attempt, worker_id, error_count, lost_count, last_error, content_hash, reused_from, progress,
       eta_seconds, lease_expires_at, control, bundle_id
  FROM jobs WHERE id = $1
