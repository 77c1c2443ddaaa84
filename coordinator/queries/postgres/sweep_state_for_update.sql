-- The sweep's state, locked against other state changes of the sweep until the transaction ends.
-- FOR NO KEY UPDATE, not FOR UPDATE: a row inserted meanwhile that references the sweep (a claim's
-- or completion's event) takes a KEY SHARE lock on it for its foreign key, which FOR UPDATE would
-- block; a cancel holding the sweep and waiting for job rows a claim holds, while the claim waits
-- for the sweep to insert its events, deadlocked (found by the fault suite).
SELECT state FROM sweeps WHERE id = $1 FOR NO KEY UPDATE
