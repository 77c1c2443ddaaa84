SELECT name, attempt, uri, sha256, bytes, created_at FROM artifacts WHERE job_id = $1 ORDER BY name
