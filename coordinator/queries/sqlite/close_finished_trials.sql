-- A trial closes when its last open job completes. Two completion batches that finish a trial's
-- last two jobs concurrently (a control beside a later level) each see the other's job still
-- running; the reaper closes such trials.
UPDATE trials SET state = 'succeeded' WHERE state = 'running'
   AND EXISTS (SELECT 1 FROM jobs j WHERE j.trial_id = trials.id)
   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.trial_id = trials.id AND j.state <> 'succeeded')
   AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = trials.dense_job_id AND j.state = 'succeeded')
