-- Records a batch of uploads, each fenced by its lease; returns the ones recorded. The lease check
-- locks the job row, so an expiry or completion waits for it. A later attempt's file of the same
-- name replaces an earlier attempt's.
WITH input AS (SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[], $6::bigint[])
                  AS i(job_id, attempt, name, uri, sha256, bytes)),
     cur AS (SELECT i.* FROM input i JOIN LATERAL (SELECT id FROM jobs j WHERE j.id = i.job_id AND j.attempt = i.attempt
                     AND j.state = 'running' FOR NO KEY UPDATE) j ON true)
INSERT INTO artifacts (job_id, name, attempt, uri, sha256, bytes)
SELECT job_id, name, attempt, uri, sha256, bytes FROM cur
ON CONFLICT (job_id, name) DO UPDATE SET attempt = excluded.attempt, uri = excluded.uri,
  sha256 = excluded.sha256, bytes = excluded.bytes, created_at = now()
RETURNING job_id, attempt, name
