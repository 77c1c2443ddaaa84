-- A heartbeat: the worker is alive, and healthy unless $2 says why not. Refused (no row) when $3,
-- the sending process, is not the one that registered the id last; '' or NULL on either side (a
-- daemon that does not say) is never refused.
UPDATE workers SET last_seen = now(), unhealthy = $2
 WHERE worker_id = $1 AND ($3 = '' OR instance IS NULL OR instance = $3)
