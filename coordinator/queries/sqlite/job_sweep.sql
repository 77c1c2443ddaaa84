SELECT sweep_id FROM jobs WHERE id = $1
