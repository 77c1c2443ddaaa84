DELETE FROM artifact_repairs WHERE job_id = $1
