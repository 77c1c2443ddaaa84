-- insert_job_event.sql, with the job's sweep looked up.
INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, detail) SELECT sweep_id, id, 'state', $2, $3, $4 FROM jobs WHERE id = $1
