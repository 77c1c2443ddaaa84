DELETE FROM artifacts WHERE job_id = $1 AND name = $2
