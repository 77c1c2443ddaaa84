-- No row lock: the write transaction (BEGIN IMMEDIATE) excludes other writers.
SELECT state, attempt, parent_job_id, dense_job_id FROM jobs WHERE id = $1
