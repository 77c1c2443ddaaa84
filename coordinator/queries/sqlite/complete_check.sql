SELECT state, attempt, kind FROM jobs WHERE id = $1
