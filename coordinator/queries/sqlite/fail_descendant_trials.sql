-- The trials of job $1 and of every job downstream of it fail.
WITH RECURSIVE d(id) AS (SELECT id FROM jobs WHERE parent_job_id = $1 UNION ALL SELECT j.id FROM jobs j JOIN d ON j.parent_job_id = d.id)
UPDATE trials SET state = 'failed' WHERE state = 'running' AND id IN
  (SELECT trial_id FROM jobs WHERE id = $1 AND trial_id IS NOT NULL
   UNION SELECT trial_id FROM jobs WHERE id IN (SELECT id FROM d) AND trial_id IS NOT NULL)
