INSERT INTO job_exclusions (job_id, worker_id, error) VALUES ($1, $2, $3) ON CONFLICT (job_id, worker_id) DO NOTHING
