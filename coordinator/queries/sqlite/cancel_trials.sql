UPDATE trials SET state = 'cancelled' WHERE sweep_id = $1 AND state = 'running'
