-- How far the reaper's trial closing has got, kept across coordinator restarts: every trial whose
-- jobs all succeeded with events up to `trials_closed_through` is closed (reaper.rs). Without it a
-- coordinator's first two passes looked at every running trial, to catch trials two concurrent
-- completions left open before it started: 6-9 s a pass at 1M running trials, inside a write
-- transaction, with the claims and completions of the running sweeps slowed the whole time.
--
-- NULL: not known (a database that already holds running trials when this migration runs; its
-- first pass looks at every running trial once, as before). A database with no running trial has
-- nothing left open, so its mark starts at its newest event.
CREATE TABLE reaper_marks (
    id                    INTEGER PRIMARY KEY CHECK (id = 1),
    trials_closed_through BIGINT
);
INSERT INTO reaper_marks (id, trials_closed_through)
SELECT 1, CASE WHEN EXISTS (SELECT 1 FROM trials WHERE state = 'running') THEN NULL
               ELSE (SELECT COALESCE(max(id), 0) FROM events) END;
