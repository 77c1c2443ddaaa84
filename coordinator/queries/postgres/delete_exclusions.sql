DELETE FROM job_exclusions WHERE job_id = $1
