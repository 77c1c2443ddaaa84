-- A heartbeat: the worker is alive, and healthy unless $2 says why not.
UPDATE workers SET last_seen = now(), unhealthy = $2 WHERE worker_id = $1
