-- Who submitted the sweep: the name of the token that made the SubmitSweep call ("anonymous"
-- when the coordinator runs without tokens). NULL for sweeps submitted before owners were recorded.
ALTER TABLE sweeps ADD COLUMN owner TEXT;
