-- On SQLite, a pause, resume, cancel or retry of a sweep touches its jobs in a series of short
-- transactions (coordinator/src/store/sqlite/sweeps.rs), so that other writers get the one write
-- lock in between. A row here says that such an operation began and has not finished: the one
-- that runs it touches the row with each transaction and deletes it with the last. The reaper
-- finishes an operation whose row nobody touched for a while (its coordinator died, or its
-- database calls failed), and the coordinator finishes them all when it starts. Postgres runs
-- each operation in one transaction and has no such table.
CREATE TABLE unfinished_sweep_ops (
    sweep_id   INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    op         TEXT NOT NULL CHECK (op IN ('pause', 'resume', 'cancel', 'retry')),
    touched_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (sweep_id, op)
);
