SELECT name FROM artifacts WHERE job_id = $1 AND attempt = $2
