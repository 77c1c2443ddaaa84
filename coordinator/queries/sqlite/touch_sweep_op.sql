-- The paced operation $2 on sweep $1 is still being written (the reaper leaves it alone).
UPDATE unfinished_sweep_ops SET touched_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE sweep_id = $1 AND op = $2
