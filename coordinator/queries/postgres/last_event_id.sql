SELECT max(id) FROM events WHERE sweep_id = $1
