SELECT attempt, worker_id, started_at, finished_at, outcome, error FROM job_attempts WHERE job_id = $1 ORDER BY attempt
