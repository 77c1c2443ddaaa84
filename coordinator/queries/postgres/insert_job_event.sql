-- A job's state change: its new state, the attempt, and optionally its progress and a detail.
INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, progress, detail) VALUES ($1, $2, 'state', $3, $4, $5, $6)
