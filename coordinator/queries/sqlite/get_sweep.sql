-- One sweep with its trial and job counts, dead-class tickets and diverged results.
SELECT s.id, s.name, s.state, s.spec, s.created_at, s.finished_at, s.owner,
       (SELECT count(*) FROM trials t WHERE t.sweep_id = s.id) AS trials,
       COALESCE(c.blocked, 0) AS blocked, COALESCE(c.ready, 0) AS ready, COALESCE(c.running, 0) AS running,
       COALESCE(c.succeeded, 0) AS succeeded, COALESCE(c.failed, 0) AS failed, COALESCE(c.cancelled, 0) AS cancelled,
       COALESCE(dd.dead, 0) AS dead, COALESCE(dv.diverged, 0) AS diverged
  FROM sweeps s
  LEFT JOIN (SELECT sweep_id,
                    CAST(sum(CASE WHEN state = 'blocked' THEN 1 ELSE 0 END) AS BIGINT) AS blocked,
                    CAST(sum(CASE WHEN state = 'ready' THEN 1 ELSE 0 END) AS BIGINT) AS ready,
                    CAST(sum(CASE WHEN state = 'running' THEN 1 ELSE 0 END) AS BIGINT) AS running,
                    CAST(sum(CASE WHEN state = 'succeeded' THEN 1 ELSE 0 END) AS BIGINT) AS succeeded,
                    CAST(sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS BIGINT) AS failed,
                    CAST(sum(CASE WHEN state NOT IN ('blocked', 'ready', 'running', 'succeeded', 'failed') THEN 1 ELSE 0 END) AS BIGINT) AS cancelled
               FROM jobs WHERE sweep_id = $1 GROUP BY sweep_id) c ON c.sweep_id = s.id
  -- Tickets (trial x level) with a dead output class.
  LEFT JOIN (SELECT sweep_id, count(*) AS dead
               FROM (SELECT DISTINCT sweep_id, trial_id, level FROM dead_units WHERE sweep_id = $1 AND dead_classes > 0) t
              GROUP BY sweep_id) dd ON dd.sweep_id = s.id
  -- Results (trial x level, controls included) whose training diverged.
  LEFT JOIN (SELECT tl.sweep_id, count(*) AS diverged
               FROM trial_levels tl JOIN level_results lr ON lr.job_id = tl.result_job_id
              WHERE tl.sweep_id = $1 AND lr.diverged GROUP BY tl.sweep_id) dv ON dv.sweep_id = s.id
 WHERE s.id = $1
