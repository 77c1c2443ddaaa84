-- The reaper's trial closing (close_finished_trials.sql) among the trials with a job that
-- succeeded after event $1: the trials a completion race can leave open are those whose last jobs
-- just completed. Scanning every running trial cost 303-621 ms a pass at 100k trials; this, 9 ms.
UPDATE trials SET state = 'succeeded' WHERE state = 'running'
   AND id IN (SELECT j.trial_id FROM events e JOIN jobs j ON j.id = e.job_id
               WHERE e.id > $1 AND e.job_state = 'succeeded' AND j.trial_id IS NOT NULL)
   AND EXISTS (SELECT 1 FROM jobs j WHERE j.trial_id = trials.id)
   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.trial_id = trials.id AND j.state <> 'succeeded')
   AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = trials.dense_job_id AND j.state = 'succeeded')
