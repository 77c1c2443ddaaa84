INSERT INTO inputs (sha256, kind, name, bytes, uri, owner) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING
