-- The head of a bulk insert: submit.rs appends one VALUES row per job (the last column, finished_at,
-- is now() for a reused job), then RETURNING id, content_hash, state, trial_id, level, parent_job_id.
INSERT INTO jobs (sweep_id, trial_id, kind, seed, metric, rate, level, parent_job_id, dense_job_id,
                  state, priority, max_attempts, content_hash, reused_from, control, progress, finished_at)
