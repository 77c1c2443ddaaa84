-- A run whose loss stopped being a number (NaN or infinite) diverged: a real outcome, recorded
-- with its level. Its non-finite losses and weight norms are stored as +Infinity (SQLite cannot
-- store NaN). `lthctl results` and `lthctl status` show diverged results.
ALTER TABLE level_results ADD COLUMN diverged BOOLEAN NOT NULL DEFAULT 0;
