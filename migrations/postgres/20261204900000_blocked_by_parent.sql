-- A completion makes its job's blocked children ready (`c.parent_job_id = done.id AND c.state =
-- 'blocked'`). With jobs_by_parent alone, the planner, on the statistics of a big submit, ANDed it
-- with the bitmap of the sweep's open jobs, which reads every open job of the sweep: 67 ms per
-- completed job at 1M jobs. This index holds blocked jobs only and answers the lookup by itself.
CREATE INDEX jobs_blocked_by_parent ON jobs (parent_job_id) WHERE state = 'blocked';
