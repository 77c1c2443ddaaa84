-- The write transaction (BEGIN IMMEDIATE) already excludes other writers: no row lock.
SELECT state FROM sweeps WHERE id = $1
