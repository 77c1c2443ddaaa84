SELECT r.job_id, x.sweep_id, x.state FROM artifact_repairs r JOIN jobs x ON x.id = r.job_id
 WHERE x.state IN ('succeeded', 'failed', 'cancelled')
