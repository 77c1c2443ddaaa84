UPDATE jobs SET paused = true WHERE sweep_id = $1 AND state IN ('blocked', 'ready', 'running')
