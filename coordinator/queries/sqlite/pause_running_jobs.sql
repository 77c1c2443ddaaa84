-- The running jobs of sweep $1 stay paused once stop_running_jobs.sql re-queues them. `+sweep_id`:
-- through jobs_running_lease (the running jobs of every sweep: a few per worker), not every job
-- of the sweep.
UPDATE jobs SET paused = true WHERE +sweep_id = $1 AND state = 'running'
