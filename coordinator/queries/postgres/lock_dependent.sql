SELECT state, attempt, parent_job_id, dense_job_id FROM jobs WHERE id = $1 FOR NO KEY UPDATE
