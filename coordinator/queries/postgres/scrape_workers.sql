SELECT count(*) AS registered, coalesce(sum(CASE WHEN last_seen >= (now() + make_interval(secs => $1)) THEN 1 ELSE 0 END), 0) AS live FROM workers
