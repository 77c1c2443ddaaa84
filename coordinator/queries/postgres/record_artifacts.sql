-- Records a batch of uploads, each fenced by its lease; returns the ones recorded, each with the
-- uri of the file it replaced (for the caller to delete). The lease check locks the job row, so an
-- expiry, a completion or another record of the job waits for it. A later attempt's file of the
-- same name replaces an earlier attempt's, a checkpoint the attempt's previous one.
WITH input AS (SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[], $6::bigint[])
                  AS i(job_id, attempt, name, uri, sha256, bytes)),
     cur AS (SELECT i.* FROM input i JOIN LATERAL (SELECT id FROM jobs j WHERE j.id = i.job_id AND j.attempt = i.attempt
                     AND j.state = 'running' FOR NO KEY UPDATE) j ON true),
     old AS (SELECT a.job_id, a.name, a.uri FROM artifacts a JOIN cur c ON a.job_id = c.job_id AND a.name = c.name),
     ins AS (INSERT INTO artifacts (job_id, name, attempt, uri, sha256, bytes)
             SELECT job_id, name, attempt, uri, sha256, bytes FROM cur
             ON CONFLICT (job_id, name) DO UPDATE SET attempt = excluded.attempt, uri = excluded.uri,
               sha256 = excluded.sha256, bytes = excluded.bytes, created_at = now()
             RETURNING job_id, attempt, name)
SELECT ins.job_id, ins.attempt, ins.name, old.uri AS replaced_uri
  FROM ins LEFT JOIN old ON old.job_id = ins.job_id AND old.name = ins.name
