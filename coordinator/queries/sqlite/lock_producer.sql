-- No row lock: the write transaction (BEGIN IMMEDIATE) excludes other writers.
SELECT sweep_id, state, attempt, reused_from FROM jobs WHERE id = $1
