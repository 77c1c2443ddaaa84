-- Artifact $2 of job $1, following reused_from to the job that holds the file.
SELECT a.job_id, a.name, a.attempt, a.uri, a.sha256, a.bytes
  FROM jobs x JOIN artifacts a ON a.job_id = COALESCE(x.reused_from, x.id)
 WHERE x.id = $1 AND a.name = $2
