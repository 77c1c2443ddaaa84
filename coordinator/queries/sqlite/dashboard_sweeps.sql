SELECT s.id, s.name, s.state, s.owner, s.created_at, s.finished_at,
       (SELECT count(*) FROM jobs j WHERE j.sweep_id = s.id) AS jobs,
       (SELECT count(*) FROM jobs j WHERE j.sweep_id = s.id AND j.state = 'succeeded') AS succeeded,
       (SELECT count(*) FROM jobs j WHERE j.sweep_id = s.id AND j.state = 'running') AS running,
       (SELECT count(*) FROM jobs j WHERE j.sweep_id = s.id AND j.state = 'failed') AS failed,
       (SELECT CAST(COALESCE(sum(r.wall_seconds), 0) AS DOUBLE PRECISION) FROM jobs j JOIN level_results r ON r.job_id = j.id WHERE j.sweep_id = s.id) AS compute_seconds,
       (SELECT CAST(avg(r.wall_seconds) AS DOUBLE PRECISION) FROM jobs j JOIN level_results r ON r.job_id = j.id WHERE j.sweep_id = s.id) AS mean_job_seconds
  FROM sweeps s WHERE ($1 IS NULL OR s.state = $1) ORDER BY s.id DESC LIMIT $2 OFFSET $3
