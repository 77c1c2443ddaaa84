-- The blocked jobs of sweep $1 that rewind to the re-run dense job $2 and whose parent is done.
UPDATE jobs SET state = 'ready' WHERE sweep_id = $1 AND state = 'blocked' AND dense_job_id = $2
   AND EXISTS (SELECT 1 FROM jobs p WHERE p.id = jobs.parent_job_id AND p.state = 'succeeded')
