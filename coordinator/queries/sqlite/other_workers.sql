-- Live (seen within -$3 seconds), healthy workers besides $1 that job $2 does not exclude.
SELECT count(*) FROM workers w
 WHERE w.worker_id <> $1 AND w.last_seen >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', $3)) AND w.unhealthy IS NULL
   AND NOT EXISTS (SELECT 1 FROM job_exclusions x WHERE x.job_id = $2 AND x.worker_id = w.worker_id)
