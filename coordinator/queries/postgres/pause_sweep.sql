UPDATE sweeps SET state = 'paused' WHERE id = $1
