-- One chunk of a resume: the paused jobs of sweep $1 with ids in [$2, $3) (see cancel_jobs_range.sql).
UPDATE jobs SET paused = false WHERE id >= $2 AND id < $3 AND +sweep_id = $1 AND paused
