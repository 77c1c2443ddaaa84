DELETE FROM unfinished_sweep_ops WHERE sweep_id = $1 AND op = $2
