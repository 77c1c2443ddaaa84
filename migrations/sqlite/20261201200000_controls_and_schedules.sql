-- Control jobs and per-level rate schedules (issue 13); see the Postgres migration of the same
-- name for what the columns mean.
--
-- SQLite cannot drop the table constraint UNIQUE (sweep_id, metric, rate, seed), so `trials` is
-- rebuilt by SQLite's documented procedure (new table, copy, drop the old, rename the new). That
-- needs foreign keys off: with them on, dropping `trials` would cascade-delete every job. sqlx runs
-- a migration inside a transaction, where `PRAGMA foreign_keys` cannot change, so the store runs
-- SQLite migrations on a connection opened with foreign keys off (and checks them afterwards); the
-- guard below refuses to run on any other connection, changing nothing.
CREATE TEMP TABLE migration_guard (foreign_keys_off INTEGER CHECK (foreign_keys_off = 0));
INSERT INTO migration_guard SELECT foreign_keys FROM pragma_foreign_keys;
DROP TABLE migration_guard;

DROP VIEW collapsed_layers;
DROP VIEW layer_kept_fraction;
DROP VIEW accuracy_vs_sparsity;
DROP VIEW trial_results;
DROP VIEW trial_levels;

CREATE TABLE trials_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep_id      INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    metric        TEXT NOT NULL,
    rate          REAL NOT NULL,
    seed          INTEGER NOT NULL,
    levels        INTEGER NOT NULL,
    dense_job_id  INTEGER REFERENCES jobs(id),
    state         TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    schedule      TEXT                         -- JSON array of per-level rates; NULL = constant rate
);
INSERT INTO trials_new (id, sweep_id, metric, rate, seed, levels, dense_job_id, state, schedule)
SELECT id, sweep_id, metric, rate, seed, levels, dense_job_id, state, NULL FROM trials;
DROP TABLE trials;
ALTER TABLE trials_new RENAME TO trials;
CREATE UNIQUE INDEX trials_key ON trials (sweep_id, metric, rate, COALESCE(schedule, ''), seed);

ALTER TABLE jobs ADD COLUMN control TEXT CHECK (control IN ('reinit', 'random_mask'));

CREATE VIEW trial_levels AS
SELECT t.sweep_id, t.id AS trial_id, t.metric, t.rate, t.seed, 0 AS level,
       j.id AS job_id, COALESCE(j.reused_from, j.id) AS result_job_id, j.state,
       CAST(NULL AS TEXT) AS control, t.schedule
  FROM trials t JOIN jobs j ON j.id = t.dense_job_id
UNION ALL
SELECT t.sweep_id, t.id, t.metric, t.rate, t.seed, j.level,
       j.id, COALESCE(j.reused_from, j.id), j.state,
       j.control, t.schedule
  FROM trials t JOIN jobs j ON j.trial_id = t.id;

CREATE VIEW trial_results AS
SELECT tl.sweep_id, tl.trial_id, tl.metric, tl.rate, tl.seed, tl.level, tl.job_id, tl.result_job_id,
       r.sparsity, r.test_accuracy, r.test_loss, r.train_loss, r.epochs, r.wall_seconds, r.iterations,
       tl.control, tl.schedule
  FROM trial_levels tl JOIN level_results r ON r.job_id = tl.result_job_id;

CREATE VIEW accuracy_vs_sparsity AS
SELECT sweep_id, metric, rate, level,
       avg(sparsity)      AS sparsity,
       avg(test_accuracy) AS mean_accuracy,
       CASE WHEN count(*) > 1 THEN
         sqrt(max(0.0, (sum(test_accuracy * test_accuracy) - sum(test_accuracy) * sum(test_accuracy) / count(*)) / (count(*) - 1)))
       END                AS std_accuracy,
       count(*)           AS seeds,
       control, schedule
  FROM trial_results
 GROUP BY sweep_id, metric, rate, level, control, schedule;

CREATE VIEW layer_kept_fraction AS
SELECT tl.sweep_id, tl.trial_id, tl.metric, tl.rate, tl.seed, tl.level, tl.job_id,
       m.layer, m.ordinal, m.kept, m.total,
       CAST(m.kept AS REAL) / NULLIF(m.total, 0) AS kept_fraction,
       m.collapsed, tl.control, tl.schedule
  FROM trial_levels tl JOIN masks m ON m.job_id = tl.result_job_id;

CREATE VIEW collapsed_layers AS
SELECT sweep_id, trial_id, metric, rate, seed, level, job_id, layer, ordinal, kept, total, control, schedule
  FROM layer_kept_fraction
 WHERE kept = 0 OR collapsed;
