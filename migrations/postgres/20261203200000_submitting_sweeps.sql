-- A sweep is `submitting` while its grid is being written (issue 9, failure 7): nothing of it is
-- claimable, pause/resume/cancel/retry refuse it, and the reaper does not close it. On Postgres
-- the whole submit is one transaction, so the state is never seen committed; the constraint
-- allows it because the store writes the same statements on both backends (see
-- coordinator/src/store/submit.rs).
ALTER TABLE sweeps DROP CONSTRAINT sweeps_state_check;
ALTER TABLE sweeps ADD CONSTRAINT sweeps_state_check
    CHECK (state IN ('submitting', 'running', 'paused', 'cancelled', 'succeeded', 'failed'));
