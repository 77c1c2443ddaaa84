DELETE FROM artifacts WHERE job_id = $1 AND name = 'checkpoint' AND ($2 IS NULL OR uri = $2)
