-- A job's result: its own row, or that of the job it was reused from.
SELECT r.sparsity, r.test_accuracy, r.test_loss, r.train_loss, r.epochs, r.wall_seconds
  FROM jobs j JOIN level_results r ON r.job_id = COALESCE(j.reused_from, j.id) WHERE j.id = $1
