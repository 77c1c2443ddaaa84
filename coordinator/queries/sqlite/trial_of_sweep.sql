SELECT id FROM trials WHERE id = $1 AND sweep_id = $2
