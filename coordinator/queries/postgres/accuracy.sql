-- The tickets of constant-rate trials (clients aggregate controls and schedules from the per-seed rows).
SELECT metric, rate, level, sparsity, mean_accuracy, std_accuracy, min_accuracy, max_accuracy, seeds
  FROM accuracy_vs_sparsity WHERE sweep_id = $1 AND control IS NULL AND schedule IS NULL ORDER BY metric, rate, level
