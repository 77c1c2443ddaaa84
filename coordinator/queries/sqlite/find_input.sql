SELECT sha256, kind, name, bytes, uri, owner, created_at FROM inputs WHERE sha256 = $1
