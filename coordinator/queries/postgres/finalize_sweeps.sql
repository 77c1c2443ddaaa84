-- Closes running sweeps (all: $1 NULL, or one) that have no open job left: failed when a trial
-- failed, else succeeded. The open job looked for is the one with the highest id: jobs are claimed
-- in id order, so that one stays open the longest, and a backward scan of jobs_open_by_sweep finds
-- it at once, instead of first stepping over the index entries of every job finished since the
-- last vacuum (which a plain NOT EXISTS, or a seq scan, would).
UPDATE sweeps SET finished_at = now(),
       state = CASE WHEN EXISTS (SELECT 1 FROM trials t WHERE t.sweep_id = sweeps.id AND t.state = 'failed') THEN 'failed' ELSE 'succeeded' END
 WHERE state = 'running' AND ($1 IS NULL OR id = $1)
   AND NOT EXISTS (SELECT j.id FROM jobs j WHERE j.sweep_id = sweeps.id AND j.state IN ('blocked', 'ready', 'running')
                   ORDER BY j.id DESC LIMIT 1)
RETURNING id
