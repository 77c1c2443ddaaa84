-- The ready jobs of sweep $1 that would download producer $2's lost file wait for its re-run (a lost
-- θk, $3, is read by every level of the seed, not only by the dense job's children).
UPDATE jobs SET state = 'blocked' WHERE sweep_id = $1 AND state = 'ready'
   AND (parent_job_id = $2 OR ($3 AND dense_job_id = $2))
RETURNING id, attempt
