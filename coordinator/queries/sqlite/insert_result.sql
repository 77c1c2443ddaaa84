-- A job's result is written once, except when the job runs again to repair a file lost from the
-- object store (repair.rs): then the new run's numbers replace the old ones.
INSERT INTO level_results (job_id, sparsity, test_accuracy, test_loss, train_loss, epochs, wall_seconds, iterations, diverged)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (job_id) DO UPDATE SET sparsity = excluded.sparsity, test_accuracy = excluded.test_accuracy, test_loss = excluded.test_loss,
  train_loss = excluded.train_loss, epochs = excluded.epochs, wall_seconds = excluded.wall_seconds, iterations = excluded.iterations,
  diverged = excluded.diverged
