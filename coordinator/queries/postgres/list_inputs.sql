SELECT sha256, kind, name, bytes, uri, owner, created_at FROM inputs ORDER BY created_at DESC, sha256
