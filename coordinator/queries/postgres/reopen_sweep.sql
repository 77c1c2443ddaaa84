UPDATE sweeps SET state = 'running', finished_at = NULL WHERE id = $1 AND state IN ('failed', 'succeeded')
