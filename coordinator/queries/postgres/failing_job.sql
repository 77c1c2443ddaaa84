-- The running attempt that fails, locked, with the counts its failure rule needs.
SELECT worker_id, error_count, max_attempts, (SELECT count(*) FROM job_exclusions x WHERE x.job_id = jobs.id) AS excluded
  FROM jobs WHERE id = $1 AND attempt = $2 AND state = 'running' FOR NO KEY UPDATE
