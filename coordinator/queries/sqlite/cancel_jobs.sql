UPDATE jobs SET state = 'cancelled', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE sweep_id = $1 AND state IN ('blocked', 'ready')
