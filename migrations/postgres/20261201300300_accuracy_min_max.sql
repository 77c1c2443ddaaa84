-- accuracy_vs_sparsity also gives the lowest and highest accuracy over seeds, so that it holds
-- everything `lthctl results` prints: the coordinator's GetResults reads this view, and lthctl
-- renders its rows instead of aggregating on its own (one aggregation, the one SQL users see).
-- control and schedule stay the last columns (20261201200000), and the grouping keeps them apart.
DROP VIEW accuracy_vs_sparsity;
CREATE VIEW accuracy_vs_sparsity AS
SELECT sweep_id, metric, rate, level,
       avg(sparsity)             AS sparsity,
       avg(test_accuracy)        AS mean_accuracy,
       stddev_samp(test_accuracy) AS std_accuracy,
       count(*)                  AS seeds,
       min(test_accuracy)        AS min_accuracy,
       max(test_accuracy)        AS max_accuracy,
       control, schedule
  FROM trial_results
 GROUP BY sweep_id, metric, rate, level, control, schedule;
