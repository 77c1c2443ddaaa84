-- The files the claimed jobs (and their parents and dense jobs) in $1 (a JSON array) hold,
-- following reused_from: θk, weights, checkpoints.
SELECT x.id AS for_job, a.job_id, a.name, a.attempt, a.uri, a.sha256, a.bytes
  FROM jobs x JOIN artifacts a ON a.job_id = COALESCE(x.reused_from, x.id)
 WHERE a.name IN ('rewind', 'weights', 'checkpoint') AND x.id IN (SELECT value FROM json_each($1))
