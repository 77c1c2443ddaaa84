-- The head of a bulk insert: submit.rs appends one VALUES row per trial, then
-- RETURNING id, metric, rate, seed, schedule.
INSERT INTO trials (sweep_id, metric, rate, seed, levels, dense_job_id, state, schedule)
