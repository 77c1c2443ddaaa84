SELECT count(*) AS registered, coalesce(sum(CASE WHEN last_seen >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', $1)) THEN 1 ELSE 0 END), 0) AS live FROM workers
