-- Jobs running again because a file they produced was lost from the object store (missing, or
-- its bytes no longer match the recorded size and sha256). Their children wait for them as
-- blocked jobs and are unblocked by the re-run's completion; the reaper unblocks the other jobs
-- waiting for the file (those that rewind to a re-run dense job's theta_k) once the re-run has
-- succeeded, and then forgets the row.
CREATE TABLE artifact_repairs (
    job_id     INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
