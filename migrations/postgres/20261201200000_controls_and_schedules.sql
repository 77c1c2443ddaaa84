-- Control jobs and per-level rate schedules (issue 13).
--
-- jobs.control: NULL for a ticket (dense or level job); 'reinit' or 'random_mask' for a control of
-- the level it is a child of (kind 'level', parent_job_id = the ticket's job, level and rate = the
-- ticket's). jobs.rate has always been per job: a scheduled trial's level jobs carry their own
-- level's rate. trials.schedule: the trial's per-level rates as a JSON array when it runs a
-- schedule (trials.rate is then the schedule's first rate), NULL for a constant rate; two trials
-- may share (metric, first rate, seed) when their schedules differ.
ALTER TABLE jobs ADD COLUMN control TEXT CHECK (control IN ('reinit', 'random_mask'));
ALTER TABLE trials ADD COLUMN schedule TEXT;
ALTER TABLE trials DROP CONSTRAINT trials_sweep_id_metric_rate_seed_key;
CREATE UNIQUE INDEX trials_key ON trials (sweep_id, metric, rate, COALESCE(schedule, ''), seed);

-- The views gain `control` (NULL = the ticket) and `schedule` as their last columns, and group,
-- join and compare by them, so that controls sit beside their tickets instead of mixing in.
DROP VIEW ticket_overlap;
DROP VIEW collapsed_layers;
DROP VIEW layer_kept_fraction;
DROP VIEW accuracy_vs_sparsity;
DROP VIEW trial_results;
DROP VIEW trial_levels;

CREATE VIEW trial_levels AS
SELECT t.sweep_id, t.id AS trial_id, t.metric, t.rate, t.seed, 0 AS level,
       j.id AS job_id, COALESCE(j.reused_from, j.id) AS result_job_id, j.state,
       NULL::text AS control, t.schedule
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
       avg(sparsity)             AS sparsity,
       avg(test_accuracy)        AS mean_accuracy,
       stddev_samp(test_accuracy) AS std_accuracy,
       count(*)                  AS seeds,
       control, schedule
  FROM trial_results
 GROUP BY sweep_id, metric, rate, level, control, schedule;

CREATE VIEW layer_kept_fraction AS
SELECT tl.sweep_id, tl.trial_id, tl.metric, tl.rate, tl.seed, tl.level, tl.job_id,
       m.layer, m.ordinal, m.kept, m.total,
       m.kept::double precision / NULLIF(m.total, 0) AS kept_fraction,
       m.collapsed, tl.control, tl.schedule
  FROM trial_levels tl JOIN masks m ON m.job_id = tl.result_job_id;

CREATE VIEW collapsed_layers AS
SELECT sweep_id, trial_id, metric, rate, seed, level, job_id, layer, ordinal, kept, total, control, schedule
  FROM layer_kept_fraction
 WHERE kept = 0 OR collapsed;

-- Tickets only (controls have no metric of their own to compare), same schedule.
CREATE VIEW ticket_overlap AS
SELECT a.sweep_id, a.rate, a.seed, a.level,
       a.metric AS metric_a, b.metric AS metric_b,
       sum(ma.kept)::bigint AS kept_a,
       sum(mb.kept)::bigint AS kept_b,
       sum(bit_count(ma.bits & mb.bits))::bigint AS shared,
       sum(bit_count(ma.bits & mb.bits))::double precision
         / NULLIF(sum(ma.kept) + sum(mb.kept) - sum(bit_count(ma.bits & mb.bits)), 0) AS jaccard,
       a.schedule
  FROM trial_levels a
  JOIN trial_levels b
    ON b.sweep_id = a.sweep_id AND b.rate = a.rate AND b.seed = a.seed AND b.level = a.level
   AND b.schedule IS NOT DISTINCT FROM a.schedule
   AND a.metric < b.metric AND a.control IS NULL AND b.control IS NULL
  JOIN masks ma ON ma.job_id = a.result_job_id
  JOIN masks mb ON mb.job_id = b.result_job_id AND mb.layer = ma.layer
 GROUP BY a.sweep_id, a.rate, a.seed, a.level, a.metric, b.metric, a.schedule;
