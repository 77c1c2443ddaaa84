-- An upload, fenced by the lease: nothing is written unless job $1 runs attempt $3. A later
-- attempt's file of the same name replaces an earlier attempt's. `AND true` tells SQLite's parser
-- the ON CONFLICT belongs to the upsert.
INSERT INTO artifacts (job_id, name, attempt, uri, sha256, bytes)
SELECT id, $2, $3, $4, $5, $6 FROM jobs WHERE id = $1 AND attempt = $3 AND state = 'running' AND true
ON CONFLICT (job_id, name) DO UPDATE SET attempt = excluded.attempt, uri = excluded.uri,
  sha256 = excluded.sha256, bytes = excluded.bytes, created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
