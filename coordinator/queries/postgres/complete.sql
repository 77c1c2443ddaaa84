-- Completes a batch of jobs in one statement (one implicit transaction). Returns the completions
-- that were refused, with what the job looked like; the others are now succeeded.
--
-- Inputs: per completion $1 job, $2 attempt, $3..$9 the result's numbers, $18 whether the attempt's
-- uploads are required, $26 diverged, $27 the device it ran on ('' = not said); per mask row
-- $10..$17 and $21..$25; $19 / $20 the uploads a dense / level job needs.
--
-- `chk` reads each job's state, where required the uploads it lacks, and for a level job whether
-- the layers it reports are its model's (the layers its dense job reported; `model` is returned
-- only when they differ, for the error), from the statement's snapshot; `done` then updates only
-- current, complete, valid ones, re-checking the lease under the row lock, so a concurrent expiry
-- still wins. Where each job ran is recorded in the same statement (`dev`): a second transaction
-- would cost a second WAL flush per batch.
--
-- A job's result and masks are written once, except when the job runs again to repair a file lost
-- from the object store (repair.rs): then the new run's numbers replace the old ones, which stayed
-- readable meanwhile (other sweeps may be reusing this job's result).
--
-- The sweep is closed in the same statement when no open job remains besides the ones this
-- statement completes (they still look running to it). All parts of one statement see the same
-- snapshot, so two batches that finish a sweep's last two jobs concurrently each see the other's
-- job still running; the reaper closes such a sweep on its next pass. The parts of a statement run
-- in no fixed order; the sweep's closing event reads `ev` so that it is numbered after the jobs'
-- events, because WatchSweep ends its stream on it.
WITH input AS (SELECT * FROM unnest($1::bigint[], $2::int[], $3::float8[], $4::float8[], $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::bigint[], $18::bool[], $26::bool[], $27::text[])
                  AS i(job_id, attempt, sparsity, test_accuracy, test_loss, train_loss, epochs, wall_seconds, iterations, require_uploads, diverged, device)),
     reported AS (SELECT r.job_id, array_agg(r.layer) AS layers FROM unnest($10::bigint[], $11::text[]) AS r(job_id, layer) GROUP BY r.job_id),
     known AS (SELECT i.job_id,
                      CASE WHEN j.kind = 'level' THEN
                        ARRAY(SELECT m.layer FROM jobs d JOIN masks m ON m.job_id = COALESCE(d.reused_from, d.id)
                               WHERE d.id = j.dense_job_id ORDER BY m.ordinal)
                      END AS model
                 FROM input i JOIN jobs j ON j.id = i.job_id),
     chk AS (SELECT i.job_id, i.attempt, j.state, j.attempt AS current_attempt,
                    CASE WHEN i.require_uploads AND j.id IS NOT NULL THEN
                      ARRAY(SELECT need FROM unnest(CASE WHEN j.kind = 'dense' THEN $19::text[] ELSE $20::text[] END) AS need
                             WHERE NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.job_id = i.job_id AND a.attempt = i.attempt AND a.name = need))
                    ELSE '{}'::text[] END AS missing,
                    CASE WHEN cardinality(k.model) > 0
                              AND NOT (k.model @> COALESCE(r.layers, '{}') AND COALESCE(r.layers, '{}') @> k.model)
                         THEN k.model END AS bad_layers_model
               FROM input i LEFT JOIN jobs j ON j.id = i.job_id LEFT JOIN known k ON k.job_id = i.job_id LEFT JOIN reported r ON r.job_id = i.job_id),
     done AS (UPDATE jobs j SET state = 'succeeded', progress = 1, eta_seconds = 0, finished_at = now(), lease_expires_at = NULL
                FROM chk WHERE j.id = chk.job_id AND j.attempt = chk.attempt AND j.state = 'running' AND cardinality(chk.missing) = 0
                           AND chk.bad_layers_model IS NULL
              RETURNING j.id, j.attempt, j.sweep_id, j.trial_id, j.level),
     dev AS (INSERT INTO job_devices (job_id, device)
             SELECT i.job_id, i.device FROM input i JOIN done ON done.id = i.job_id WHERE i.device <> ''
             ON CONFLICT (job_id) DO NOTHING),
     att AS (UPDATE job_attempts a SET outcome = 'succeeded', finished_at = now()
               FROM done WHERE a.job_id = done.id AND a.attempt = done.attempt),
     res AS (INSERT INTO level_results (job_id, sparsity, test_accuracy, test_loss, train_loss, epochs, wall_seconds, iterations, diverged)
             SELECT i.job_id, i.sparsity, i.test_accuracy, i.test_loss, i.train_loss, i.epochs, i.wall_seconds, i.iterations, i.diverged
               FROM input i JOIN done ON done.id = i.job_id
             ON CONFLICT (job_id) DO UPDATE SET sparsity = excluded.sparsity, test_accuracy = excluded.test_accuracy, test_loss = excluded.test_loss,
  train_loss = excluded.train_loss, epochs = excluded.epochs, wall_seconds = excluded.wall_seconds, iterations = excluded.iterations,
  diverged = excluded.diverged),
     msk AS (INSERT INTO masks (job_id, layer, ordinal, kept, total, bits, collapsed, weight_norm, outputs, dead_outputs, inputs, dead_inputs, output_layer)
             SELECT m.job_id, m.layer, m.ordinal, m.kept, m.total,
                    substring(('x' || encode(m.bits, 'hex'))::bit varying from 1 for m.total::int), m.collapsed, m.weight_norm,
                    m.outputs, m.dead_outputs, m.inputs, m.dead_inputs, m.output_layer
               FROM unnest($10::bigint[], $11::text[], $12::int[], $13::bigint[], $14::bigint[], $15::bytea[], $16::bool[], $17::float8[],
                           $21::bigint[], $22::bigint[], $23::bigint[], $24::bigint[], $25::bool[])
                    AS m(job_id, layer, ordinal, kept, total, bits, collapsed, weight_norm, outputs, dead_outputs, inputs, dead_inputs, output_layer)
               JOIN done ON done.id = m.job_id
             ON CONFLICT (job_id, layer) DO UPDATE SET ordinal = excluded.ordinal, kept = excluded.kept, total = excluded.total, bits = excluded.bits,
  collapsed = excluded.collapsed, weight_norm = excluded.weight_norm, outputs = excluded.outputs, dead_outputs = excluded.dead_outputs,
  inputs = excluded.inputs, dead_inputs = excluded.dead_inputs, output_layer = excluded.output_layer),
     -- Twins that waited for these jobs (same content hash, ready): done too, reused from them.
     twins AS (UPDATE jobs t SET state = 'succeeded', reused_from = done.id, progress = 1, eta_seconds = 0, finished_at = now()
                 FROM done JOIN jobs dj ON dj.id = done.id
                WHERE t.content_hash = dj.content_hash AND t.state = 'ready' AND t.id <> done.id
               RETURNING t.id, t.sweep_id, t.attempt, done.id AS src),
     unblocked AS (UPDATE jobs c SET state = 'ready' FROM (SELECT id FROM done UNION ALL SELECT id FROM twins) p
                    WHERE c.parent_job_id = p.id AND c.state = 'blocked'),
     twin_ev AS (INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, progress, detail)
                 SELECT sweep_id, id, 'state', 'succeeded', attempt, 1, jsonb_build_object('reused_from', src) FROM twins),
     trial AS (UPDATE trials t SET state = 'succeeded' FROM done
                WHERE t.id = done.trial_id AND t.state = 'running'
                  AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.trial_id = t.id AND o.state <> 'succeeded'
                                    AND NOT EXISTS (SELECT 1 FROM done d2 WHERE d2.id = o.id))),
     ev AS (INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, progress)
            SELECT sweep_id, id, 'state', 'succeeded', attempt, 1 FROM done RETURNING id),
     fin AS (UPDATE sweeps SET finished_at = now(), state = CASE WHEN EXISTS (SELECT 1 FROM trials t WHERE t.sweep_id = sweeps.id AND t.state = 'failed') THEN 'failed' ELSE 'succeeded' END
              WHERE sweeps.id IN (SELECT sweep_id FROM done) AND sweeps.state = 'running'
                AND NOT EXISTS (SELECT j.id FROM jobs j WHERE j.sweep_id = sweeps.id AND j.state IN ('blocked', 'ready', 'running')
                                     AND NOT EXISTS (SELECT 1 FROM done WHERE done.id = j.id)
                                   ORDER BY j.id DESC LIMIT 1)
             RETURNING sweeps.id),
     fin_ev AS (INSERT INTO events (sweep_id, kind) SELECT id, 'sweep' FROM fin WHERE (SELECT count(*) FROM ev) >= 0)
SELECT chk.job_id, chk.attempt, chk.state, chk.current_attempt, chk.missing, chk.bad_layers_model FROM chk
 WHERE NOT EXISTS (SELECT 1 FROM done WHERE done.id = chk.job_id AND done.attempt = chk.attempt)
