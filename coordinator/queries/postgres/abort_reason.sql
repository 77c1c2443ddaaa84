SELECT j.state AS job_state, s.state AS sweep_state FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE j.id = $1
