-- accuracy_vs_sparsity also gives the lowest and highest accuracy over seeds (as on Postgres):
-- GetResults reads this view and `lthctl results` renders its rows.
DROP VIEW accuracy_vs_sparsity;
CREATE VIEW accuracy_vs_sparsity AS
SELECT sweep_id, metric, rate, level,
       avg(sparsity)      AS sparsity,
       avg(test_accuracy) AS mean_accuracy,
       CASE WHEN count(*) > 1 THEN
         sqrt(max(0.0, (sum(test_accuracy * test_accuracy) - sum(test_accuracy) * sum(test_accuracy) / count(*)) / (count(*) - 1)))
       END                AS std_accuracy,
       count(*)           AS seeds,
       min(test_accuracy) AS min_accuracy,
       max(test_accuracy) AS max_accuracy,
       control, schedule
  FROM trial_results
 GROUP BY sweep_id, metric, rate, level, control, schedule;
