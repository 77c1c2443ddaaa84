-- The lowest and highest trial id of a sweep (NULLs when it has none).
SELECT (SELECT min(id) FROM trials WHERE sweep_id = $1) AS lo, (SELECT max(id) FROM trials WHERE sweep_id = $1) AS hi
