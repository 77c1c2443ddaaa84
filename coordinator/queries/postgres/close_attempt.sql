-- Ends an attempt: outcome 'failed', 'aborted' or 'lost', with why.
UPDATE job_attempts SET outcome = $3, finished_at = now(), error = $4 WHERE job_id = $1 AND attempt = $2
