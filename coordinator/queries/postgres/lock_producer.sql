SELECT sweep_id, state, attempt, reused_from FROM jobs WHERE id = $1 FOR NO KEY UPDATE
