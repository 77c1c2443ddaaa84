-- Ticket bundles: the other ready members of the bundles whose leads claim.sql just claimed ($1
-- the leads' ids, $2 their claim_ord, $3 their worker, $4 its lease seconds; parallel arrays), each
-- for the lead's worker under its own attempt, lease, attempt row and event, with the files it
-- downloads (the rows of claim.sql). Run only when a claim took a bundle's lead, so claims of
-- unbundled jobs cost what they did. The twin rule and the exclusions (the claiming worker's) are
-- claim.sql's; SKIP LOCKED: a member a concurrent claim holds is not waited for (it runs later,
-- alone or with whoever is ready then). Keyed lookups (`= ANY(ARRAY(...))`, index jobs_bundle)
-- for the reason in claim.sql.
WITH leads AS (SELECT l.id, l.ord, l.worker_id, l.lease_secs, j.bundle_id
                 FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::float8[]) AS l(id, ord, worker_id, lease_secs)
                 JOIN jobs j ON j.id = l.id
                WHERE j.id = ANY($1::bigint[]) AND j.bundle_id IS NOT NULL),
     sibs AS (SELECT m.id, l.ord, l.worker_id, l.lease_secs FROM jobs m JOIN leads l ON l.bundle_id = m.bundle_id
               WHERE m.bundle_id = ANY(ARRAY(SELECT bundle_id FROM leads)) AND m.id <> l.id
                 AND m.state = 'ready' AND NOT m.paused
                 AND NOT EXISTS (SELECT 1 FROM jobs twin WHERE twin.content_hash = m.content_hash
                           AND (twin.state = 'running' OR (twin.state = 'ready' AND twin.id < m.id AND NOT twin.paused)))
                 AND (m.error_count = 0 OR NOT EXISTS (SELECT 1 FROM job_exclusions x WHERE x.job_id = m.id AND x.worker_id = l.worker_id))
               FOR NO KEY UPDATE OF m SKIP LOCKED),
     claimed AS (UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, worker_id = a.worker_id,
                        lease_expires_at = now() + make_interval(secs => a.lease_secs), started_at = now(),
                        progress = 0, eta_seconds = NULL
                   FROM sibs a WHERE j.id = a.id AND j.id = ANY(ARRAY(SELECT id FROM sibs)) RETURNING j.*, a.ord AS claim_ord),
     hist AS (INSERT INTO job_attempts (job_id, attempt, worker_id, outcome)
              SELECT id, attempt, worker_id, 'running' FROM claimed),
     ev AS (INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, progress)
              SELECT sweep_id, id, 'state', 'running', attempt, 0 FROM claimed)
SELECT c.claim_ord, true AS known, c.id, c.sweep_id, c.trial_id, c.kind, c.seed, c.metric, c.rate, c.level, c.parent_job_id, c.dense_job_id, c.state, c.attempt, c.worker_id, c.error_count, c.lost_count, c.last_error, c.content_hash, c.reused_from, c.progress, c.eta_seconds, c.lease_expires_at, c.control, c.bundle_id,
       rw.job_id AS rw_job_id, rw.name AS rw_name, rw.attempt AS rw_attempt, rw.uri AS rw_uri, rw.sha256 AS rw_sha256, rw.bytes AS rw_bytes,
       wt.job_id AS wt_job_id, wt.name AS wt_name, wt.attempt AS wt_attempt, wt.uri AS wt_uri, wt.sha256 AS wt_sha256, wt.bytes AS wt_bytes,
       ck.job_id AS ck_job_id, ck.name AS ck_name, ck.attempt AS ck_attempt, ck.uri AS ck_uri, ck.sha256 AS ck_sha256, ck.bytes AS ck_bytes
  FROM claimed c
  LEFT JOIN LATERAL (SELECT a.* FROM jobs x JOIN artifacts a ON a.job_id = COALESCE(x.reused_from, x.id) AND a.name = 'rewind' WHERE x.id = c.dense_job_id LIMIT 1) rw ON c.kind = 'level'
  LEFT JOIN LATERAL (SELECT a.* FROM jobs x JOIN artifacts a ON a.job_id = COALESCE(x.reused_from, x.id) AND a.name = 'weights' WHERE x.id = c.parent_job_id LIMIT 1) wt ON c.kind = 'level'
  LEFT JOIN LATERAL (SELECT a.* FROM jobs x JOIN artifacts a ON a.job_id = COALESCE(x.reused_from, x.id) AND a.name = 'checkpoint' WHERE x.id = c.id LIMIT 1) ck ON true
