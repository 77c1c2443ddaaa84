-- Up to $3 events of sweep $1 after event $2, with the job's columns (NULL for sweep events).
SELECT e.id AS event_id, e.at, e.kind AS event_kind, e.job_state, e.attempt AS event_attempt, e.progress AS event_progress,
       j.id, j.sweep_id, j.trial_id, j.kind, j.seed, j.metric, j.rate, j.level, j.parent_job_id, j.dense_job_id,
       j.state, j.attempt, j.worker_id, j.error_count, j.lost_count, j.last_error, j.content_hash, j.reused_from,
       j.progress, j.eta_seconds, j.lease_expires_at, j.control, j.bundle_id
  FROM events e LEFT JOIN jobs j ON j.id = e.job_id
 WHERE e.sweep_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3
