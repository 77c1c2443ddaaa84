-- Where a finished job ran. A retried completion of the same job keeps the first row.
INSERT INTO job_devices (job_id, device) VALUES ($1, $2) ON CONFLICT (job_id) DO NOTHING
