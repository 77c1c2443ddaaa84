INSERT INTO artifact_repairs (job_id) VALUES ($1) ON CONFLICT (job_id) DO NOTHING
