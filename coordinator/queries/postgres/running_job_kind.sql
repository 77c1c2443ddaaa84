SELECT kind FROM jobs WHERE id = $1 AND attempt = $2 AND state = 'running'
