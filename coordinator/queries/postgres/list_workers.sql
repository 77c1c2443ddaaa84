-- Up to $3 workers with ids after $2; alive = seen within -$1 seconds; $4: the lost ones too.
SELECT w.worker_id, w.host, w.gpus, w.cpus, w.slots, w.libtorch_version, w.cuda_version, w.last_seen, w.unhealthy,
       (SELECT count(*) FROM jobs j WHERE j.state = 'running' AND j.worker_id = w.worker_id) AS running,
       CASE WHEN w.last_seen >= (now() + make_interval(secs => $1)) THEN 1 ELSE 0 END AS alive
  FROM workers w
 WHERE w.worker_id > $2 AND ($4 OR w.last_seen >= (now() + make_interval(secs => $1)))
 ORDER BY w.worker_id LIMIT $3
