-- Analysis views. A reused job (reused_from set) shares the original job's results and masks, so
-- every view reads results through result_job_id = COALESCE(reused_from, id). Level 0 is the seed's
-- shared dense job and appears once per trial (it is the first point of every metric's curve).

CREATE VIEW trial_levels AS
SELECT t.sweep_id, t.id AS trial_id, t.metric, t.rate, t.seed, 0 AS level,
       j.id AS job_id, COALESCE(j.reused_from, j.id) AS result_job_id, j.state
  FROM trials t JOIN jobs j ON j.id = t.dense_job_id
UNION ALL
SELECT t.sweep_id, t.id, t.metric, t.rate, t.seed, j.level,
       j.id, COALESCE(j.reused_from, j.id), j.state
  FROM trials t JOIN jobs j ON j.trial_id = t.id;

-- One row per finished (trial, level) with its numbers.
CREATE VIEW trial_results AS
SELECT tl.sweep_id, tl.trial_id, tl.metric, tl.rate, tl.seed, tl.level, tl.job_id, tl.result_job_id,
       r.sparsity, r.test_accuracy, r.test_loss, r.train_loss, r.epochs, r.wall_seconds, r.iterations
  FROM trial_levels tl JOIN level_results r ON r.job_id = tl.result_job_id;

-- Accuracy against sparsity per metric and rate: mean and sample standard deviation over seeds.
CREATE VIEW accuracy_vs_sparsity AS
SELECT sweep_id, metric, rate, level,
       avg(sparsity)             AS sparsity,
       avg(test_accuracy)        AS mean_accuracy,
       stddev_samp(test_accuracy) AS std_accuracy,
       count(*)                  AS seeds
  FROM trial_results
 GROUP BY sweep_id, metric, rate, level;

-- The fraction of each layer's weights kept, per trial and level.
CREATE VIEW layer_kept_fraction AS
SELECT tl.sweep_id, tl.trial_id, tl.metric, tl.rate, tl.seed, tl.level, tl.job_id,
       m.layer, m.ordinal, m.kept, m.total,
       m.kept::double precision / NULLIF(m.total, 0) AS kept_fraction,
       m.collapsed
  FROM trial_levels tl JOIN masks m ON m.job_id = tl.result_job_id;

-- Layers through which no signal passes: nothing kept, or flagged collapsed by the worker.
CREATE VIEW collapsed_layers AS
SELECT sweep_id, trial_id, metric, rate, seed, level, job_id, layer, ordinal, kept, total
  FROM layer_kept_fraction
 WHERE kept = 0 OR collapsed;

-- Ticket overlap between two metrics' masks at the same sweep, rate, seed and level: the number of
-- weights both tickets keep (bit_count of the AND of their masks), summed over layers.
CREATE VIEW ticket_overlap AS
SELECT a.sweep_id, a.rate, a.seed, a.level,
       a.metric AS metric_a, b.metric AS metric_b,
       sum(ma.kept)::bigint AS kept_a,
       sum(mb.kept)::bigint AS kept_b,
       sum(bit_count(ma.bits & mb.bits))::bigint AS shared,
       sum(bit_count(ma.bits & mb.bits))::double precision
         / NULLIF(sum(ma.kept) + sum(mb.kept) - sum(bit_count(ma.bits & mb.bits)), 0) AS jaccard
  FROM trial_levels a
  JOIN trial_levels b
    ON b.sweep_id = a.sweep_id AND b.rate = a.rate AND b.seed = a.seed AND b.level = a.level
   AND a.metric < b.metric
  JOIN masks ma ON ma.job_id = a.result_job_id
  JOIN masks mb ON mb.job_id = b.result_job_id AND mb.layer = ma.layer
 GROUP BY a.sweep_id, a.rate, a.seed, a.level, a.metric, b.metric;
