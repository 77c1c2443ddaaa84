-- Claims for a batch of workers ($1 worker ids, $2 jobs wanted, $3 lease seconds), in one round trip.
--
-- Slots are numbered in request order, picked jobs in priority order, and slot k gets the k-th job.
-- SKIP LOCKED makes concurrent batches (this coordinator's or another's) take disjoint jobs. A
-- ready job waits while a twin (same content hash: another sweep's or trial's copy of the same
-- work) is running, or is ready with a lower id (so one batch never picks two twins); when the twin
-- succeeds, the completion marks it succeeded, reused from the twin. A job is not claimed by a
-- worker excluded from it (it failed there for a reason of that machine, job_exclusions); only jobs
-- with a counted failure can have exclusions, so the common case costs no lookup, and a job
-- excluded for one worker of a batch waits for a later batch (exclusions are rare).
--
-- `j.id = ANY(ARRAY(SELECT id FROM assigned))` makes the update find its rows by primary key: the
-- generic plan cannot know how few rows `assigned` holds (its LIMIT is a subquery) and otherwise
-- hash-joins it against a sequential scan of every job (87.7 ms a claim at 102,500 jobs, growing
-- with the table; 5.2 ms with it; BENCHMARKS.md).
--
-- The files each job downloads come back in the same round trip, by keyed lookups per claimed job:
-- `LIMIT 1` (there is at most one such file) keeps Postgres from flattening the lateral subquery
-- into a join, which its generic plan, expecting thousands of claimed rows, runs as hash joins over
-- every job and artifact (55 ms a claim with 5k artifacts, growing with them).
--
-- Ticket bundles (jobs.bundle_id, formed at submit): `picked` takes only a bundle's lead (no ready,
-- unpaused member of its bundle has a lower id), so a bundle fills one slot; its other ready members
-- are claimed for the same worker right after, by claim_siblings.sql (store/postgres/claim.rs).
-- Jobs outside bundles cost no lookup.
--
-- Rows: one per claimed job (known = true), and one of NULLs (known = false) per request whose
-- worker is not registered.
WITH req AS (SELECT * FROM unnest($1::text[], $2::int[], $3::float8[]) WITH ORDINALITY AS r(worker_id, n, lease_secs, ord)),
     seen AS (UPDATE workers SET last_seen = now() WHERE worker_id = ANY($1::text[]) RETURNING worker_id),
     slots AS (SELECT r.ord, r.worker_id, r.lease_secs, row_number() OVER (ORDER BY r.ord, g.i) AS slot
                 FROM req r JOIN seen s ON s.worker_id = r.worker_id CROSS JOIN LATERAL generate_series(1, r.n) AS g(i)),
     picked AS (SELECT id, priority FROM jobs
                 WHERE state = 'ready' AND NOT paused
                   AND NOT EXISTS (SELECT 1 FROM jobs twin WHERE twin.content_hash = jobs.content_hash
                             AND (twin.state = 'running' OR (twin.state = 'ready' AND twin.id < jobs.id AND NOT twin.paused)))
                   AND (jobs.error_count = 0 OR NOT EXISTS (SELECT 1 FROM job_exclusions x WHERE x.job_id = jobs.id AND x.worker_id = ANY($1::text[])))
                   AND (jobs.bundle_id IS NULL OR NOT EXISTS (SELECT 1 FROM jobs sib WHERE sib.bundle_id = jobs.bundle_id
                             AND sib.state = 'ready' AND NOT sib.paused AND sib.id < jobs.id))
                 ORDER BY priority DESC, id LIMIT (SELECT count(*) FROM slots) FOR NO KEY UPDATE SKIP LOCKED),
     assigned AS (SELECT p.id, s.ord, s.worker_id, s.lease_secs
                    FROM (SELECT id, row_number() OVER (ORDER BY priority DESC, id) AS slot FROM picked) p
                    JOIN slots s ON s.slot = p.slot),
     claimed AS (UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, worker_id = a.worker_id,
                        lease_expires_at = now() + make_interval(secs => a.lease_secs), started_at = now(),
                        progress = 0, eta_seconds = NULL
                   FROM assigned a WHERE j.id = a.id AND j.id = ANY(ARRAY(SELECT id FROM assigned)) RETURNING j.*, a.ord AS claim_ord),
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
UNION ALL
SELECT r.ord, false, NULL::bigint, NULL::bigint, NULL::bigint, NULL::text, NULL::bigint, NULL::text, NULL::double precision,
       NULL::integer, NULL::bigint, NULL::bigint, NULL::text, NULL::integer, NULL::text, NULL::integer, NULL::integer, NULL::text,
       NULL::text, NULL::bigint, NULL::double precision, NULL::double precision, NULL::timestamptz, NULL::text, NULL::bigint,
       NULL::bigint, NULL::text, NULL::integer, NULL::text, NULL::text, NULL::bigint, NULL::bigint, NULL::text, NULL::integer, NULL::text, NULL::text, NULL::bigint, NULL::bigint, NULL::text, NULL::integer, NULL::text, NULL::text, NULL::bigint
  FROM req r WHERE NOT EXISTS (SELECT 1 FROM seen s WHERE s.worker_id = r.worker_id)
