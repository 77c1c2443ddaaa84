-- One chunk of a cancel: the running trials of sweep $1 with ids in [$2, $3) (see cancel_jobs_range.sql).
UPDATE trials SET state = 'cancelled' WHERE id >= $2 AND id < $3 AND +sweep_id = $1 AND state = 'running'
