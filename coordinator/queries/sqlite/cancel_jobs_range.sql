-- One chunk of a cancel: the unfinished jobs of sweep $1 with ids in [$2, $3). `+sweep_id` keeps
-- the planner on the id range (the chunk's rows, whatever the sweep's size) instead of every job
-- of the sweep through jobs_by_sweep.
UPDATE jobs SET state = 'cancelled', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
 WHERE id >= $2 AND id < $3 AND +sweep_id = $1 AND state IN ('blocked', 'ready')
