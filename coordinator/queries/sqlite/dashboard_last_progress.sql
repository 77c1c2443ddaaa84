SELECT detail FROM events WHERE job_id = $1 AND kind = 'progress' ORDER BY id DESC LIMIT 1
