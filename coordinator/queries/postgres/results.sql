SELECT metric, rate, seed, level, job_id, result_job_id, sparsity, test_accuracy, test_loss, train_loss,
       epochs, wall_seconds, iterations, control, schedule,
       (SELECT lr.diverged FROM level_results lr WHERE lr.job_id = trial_results.result_job_id) AS diverged
  FROM trial_results WHERE sweep_id = $1 ORDER BY metric, rate, schedule, seed, level, control
