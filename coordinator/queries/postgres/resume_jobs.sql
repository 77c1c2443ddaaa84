UPDATE jobs SET paused = false WHERE sweep_id = $1 AND paused
