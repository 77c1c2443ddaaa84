UPDATE trials SET state = 'running' WHERE sweep_id = $1 AND state = 'failed'
   AND EXISTS (SELECT 1 FROM jobs j WHERE j.trial_id = trials.id AND j.state IN ('blocked', 'ready'))
