-- The trial closes with its last open job: its last level, or a control still running after it.
UPDATE trials SET state = 'succeeded' WHERE id = $1 AND state = 'running'
   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.trial_id = $1 AND j.state <> 'succeeded')
