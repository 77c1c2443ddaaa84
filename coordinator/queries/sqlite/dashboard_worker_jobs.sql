SELECT worker_id, id, sweep_id FROM jobs WHERE state = 'running' AND worker_id IS NOT NULL ORDER BY worker_id, id LIMIT $1
