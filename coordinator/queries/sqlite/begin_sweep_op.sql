-- Paced operation $2 on sweep $1 began (or began again): see unfinished_sweep_ops.
INSERT INTO unfinished_sweep_ops (sweep_id, op) VALUES ($1, $2)
ON CONFLICT (sweep_id, op) DO UPDATE SET touched_at = excluded.touched_at
