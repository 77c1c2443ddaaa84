INSERT INTO job_attempts (job_id, attempt, worker_id, outcome) VALUES ($1, $2, $3, 'running')
