-- Workers a job must not be claimed by again: each failed it for a reason of its own machine
-- (FailJob with node_local: a dataset path missing there, a full disk, no CUDA, out of memory).
-- Only jobs with error_count >= 1 have rows (the first such failure counts), which lets the
-- claim skip the lookup for every other job.
CREATE TABLE job_exclusions (
    job_id     BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    worker_id  TEXT NOT NULL,
    error      TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, worker_id)
);

-- Why a worker stopped claiming (it failed several different jobs in a row node-locally), as
-- its heartbeats report it; NULL while healthy.
ALTER TABLE workers ADD COLUMN unhealthy TEXT;
