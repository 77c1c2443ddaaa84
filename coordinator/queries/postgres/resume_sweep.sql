UPDATE sweeps SET state = 'running' WHERE id = $1
