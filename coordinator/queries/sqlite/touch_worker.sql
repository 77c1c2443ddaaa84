-- A heartbeat: the worker is alive, and healthy unless $2 says why not.
UPDATE workers SET last_seen = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), unhealthy = $2 WHERE worker_id = $1
