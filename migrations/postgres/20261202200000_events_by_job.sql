-- The dashboard's job page and running-jobs table read a job's latest progress events; without
-- this index each of those reads scanned the sweep's (or the whole) events table.
CREATE INDEX events_by_job ON events (job_id, id);
