-- Analysis views, as in Postgres. `ticket_overlap` is omitted: SQLite has no bit strings or
-- bit_count, so intersecting masks needs Postgres (or reading the BLOBs in a program).
-- std_accuracy uses sqrt(): built into the sqlite3 shell (3.35+); the coordinator registers it on
-- its own connections.

CREATE VIEW trial_levels AS
SELECT t.sweep_id, t.id AS trial_id, t.metric, t.rate, t.seed, 0 AS level,
       j.id AS job_id, COALESCE(j.reused_from, j.id) AS result_job_id, j.state
  FROM trials t JOIN jobs j ON j.id = t.dense_job_id
UNION ALL
SELECT t.sweep_id, t.id, t.metric, t.rate, t.seed, j.level,
       j.id, COALESCE(j.reused_from, j.id), j.state
  FROM trials t JOIN jobs j ON j.trial_id = t.id;

CREATE VIEW trial_results AS
SELECT tl.sweep_id, tl.trial_id, tl.metric, tl.rate, tl.seed, tl.level, tl.job_id, tl.result_job_id,
       r.sparsity, r.test_accuracy, r.test_loss, r.train_loss, r.epochs, r.wall_seconds, r.iterations
  FROM trial_levels tl JOIN level_results r ON r.job_id = tl.result_job_id;

CREATE VIEW accuracy_vs_sparsity AS
SELECT sweep_id, metric, rate, level,
       avg(sparsity)      AS sparsity,
       avg(test_accuracy) AS mean_accuracy,
       CASE WHEN count(*) > 1 THEN
         sqrt(max(0.0, (sum(test_accuracy * test_accuracy) - sum(test_accuracy) * sum(test_accuracy) / count(*)) / (count(*) - 1)))
       END                AS std_accuracy,
       count(*)           AS seeds
  FROM trial_results
 GROUP BY sweep_id, metric, rate, level;

CREATE VIEW layer_kept_fraction AS
SELECT tl.sweep_id, tl.trial_id, tl.metric, tl.rate, tl.seed, tl.level, tl.job_id,
       m.layer, m.ordinal, m.kept, m.total,
       CAST(m.kept AS REAL) / NULLIF(m.total, 0) AS kept_fraction,
       m.collapsed
  FROM trial_levels tl JOIN masks m ON m.job_id = tl.result_job_id;

CREATE VIEW collapsed_layers AS
SELECT sweep_id, trial_id, metric, rate, seed, level, job_id, layer, ordinal, kept, total
  FROM layer_kept_fraction
 WHERE kept = 0 OR collapsed;
