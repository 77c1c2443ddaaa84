-- A sweep is `submitting` while its grid is written in short transactions (issue 9, failure 7;
-- coordinator/src/store/submit.rs): nothing of it is claimable, pause/resume/cancel/retry refuse
-- it, the reaper does not close it, and one left behind by a crash is deleted when the
-- coordinator starts.
--
-- SQLite cannot change a CHECK constraint, so `sweeps` is rebuilt by SQLite's documented
-- procedure (new table, copy, drop the old, rename the new), with foreign keys off (see
-- 20261201200000_controls_and_schedules.sql: with them on, dropping `sweeps` would
-- cascade-delete every trial, job and event). The one view that reads `sweeps` is dropped first
-- and made again after, since a rename checks every view.
CREATE TEMP TABLE migration_guard (foreign_keys_off INTEGER CHECK (foreign_keys_off = 0));
INSERT INTO migration_guard SELECT foreign_keys FROM pragma_foreign_keys;
DROP TABLE migration_guard;

DROP VIEW measured_throughput;

CREATE TABLE sweeps_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    client_token  TEXT UNIQUE,
    name          TEXT NOT NULL,
    spec          TEXT NOT NULL,               -- JSON
    state         TEXT NOT NULL CHECK (state IN ('submitting', 'running', 'paused', 'cancelled', 'succeeded', 'failed')),
    priority      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at   TEXT,
    owner         TEXT
);
INSERT INTO sweeps_new (id, client_token, name, spec, state, priority, max_attempts, created_at, finished_at, owner)
SELECT id, client_token, name, spec, state, priority, max_attempts, created_at, finished_at, owner FROM sweeps;
-- Sweep ids keep counting from where they were (AUTOINCREMENT never reuses an id).
CREATE TEMP TABLE sweeps_seq AS SELECT seq FROM sqlite_sequence WHERE name = 'sweeps';
DROP TABLE sweeps;
ALTER TABLE sweeps_new RENAME TO sweeps;
UPDATE sqlite_sequence SET seq = max(seq, (SELECT seq FROM sweeps_seq)) WHERE name = 'sweeps' AND EXISTS (SELECT 1 FROM sweeps_seq);
INSERT INTO sqlite_sequence (name, seq)
SELECT 'sweeps', seq FROM sweeps_seq WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'sweeps');
DROP TABLE sweeps_seq;

CREATE VIEW measured_throughput AS
SELECT model, batch_size, precision, device,
       count(*) AS jobs,
       sum(images) AS images,
       sum(wall_seconds) AS seconds,
       sum(images) / sum(wall_seconds) AS images_per_second
  FROM (SELECT CASE json_type(s.spec, '$.model') WHEN 'text' THEN json_extract(s.spec, '$.model')
                    ELSE 'torchscript:' || COALESCE(json_extract(s.spec, '$.model.sha256'), '') END AS model,
               CAST(json_extract(s.spec, '$.recipe.batch_size') AS INTEGER) AS batch_size,
               json_extract(s.spec, '$.recipe.precision') AS precision,
               d.device,
               r.iterations * CAST(json_extract(s.spec, '$.recipe.batch_size') AS INTEGER) AS images,
               r.wall_seconds
          FROM level_results r
          JOIN jobs j ON j.id = r.job_id
          JOIN sweeps s ON s.id = j.sweep_id
          JOIN job_devices d ON d.job_id = r.job_id
         WHERE j.attempt = 1 AND r.wall_seconds > 0 AND r.iterations > 0) m
 GROUP BY model, batch_size, precision, device;
