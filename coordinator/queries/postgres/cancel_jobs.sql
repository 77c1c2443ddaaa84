UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE sweep_id = $1 AND state IN ('blocked', 'ready')
