SELECT count(*) FROM jobs WHERE sweep_id = $1 AND ($2 IS NULL OR state = $2)
