-- One chunk of a pause: the unfinished jobs of sweep $1 with ids in [$2, $3) (see cancel_jobs_range.sql).
UPDATE jobs SET paused = true WHERE id >= $2 AND id < $3 AND +sweep_id = $1 AND state IN ('blocked', 'ready', 'running') AND NOT paused
