-- Every job downstream of job $1 ($2: its id as text) that has not run fails.
WITH RECURSIVE d(id) AS (SELECT id FROM jobs WHERE parent_job_id = $1 UNION ALL SELECT j.id FROM jobs j JOIN d ON j.parent_job_id = d.id)
UPDATE jobs SET state = 'failed', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), last_error = 'not run: an earlier job of its chain (job ' || $2 || ') failed'
 WHERE id IN (SELECT id FROM d) AND state IN ('blocked', 'ready')
