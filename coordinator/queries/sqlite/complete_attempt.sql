UPDATE job_attempts SET outcome = 'succeeded', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE job_id = $1 AND attempt = $2
