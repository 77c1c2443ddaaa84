UPDATE jobs SET state = 'ready' WHERE parent_job_id = $1 AND state = 'blocked'
