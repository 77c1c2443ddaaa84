UPDATE workers SET last_seen = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE worker_id = $1
