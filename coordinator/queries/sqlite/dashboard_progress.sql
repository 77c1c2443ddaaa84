-- A job's latest $2 progress reports, oldest first.
SELECT at, attempt, detail FROM (SELECT id, at, attempt, detail FROM events WHERE job_id = $1 AND kind = 'progress'
 ORDER BY id DESC LIMIT $2) t ORDER BY id
