-- Where finished jobs ran: $1 job ids, $2 their devices (parallel arrays). A retried completion
-- of the same job keeps the first row.
INSERT INTO job_devices (job_id, device)
SELECT job_id, device FROM unnest($1::bigint[], $2::text[]) AS d(job_id, device)
ON CONFLICT (job_id) DO NOTHING
