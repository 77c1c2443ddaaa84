-- The lowest and highest job id of a sweep (NULLs when it has none): the range a paced operation
-- walks in chunks. Each is one step down jobs_by_sweep.
SELECT (SELECT min(id) FROM jobs WHERE sweep_id = $1) AS lo, (SELECT max(id) FROM jobs WHERE sweep_id = $1) AS hi
