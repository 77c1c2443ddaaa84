INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, progress, detail) VALUES ($1, $2, 'progress', 'running', $3, $4, $5)
