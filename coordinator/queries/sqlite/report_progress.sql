UPDATE jobs SET progress = $3,
       eta_seconds = CASE WHEN $3 > 0 THEN ((julianday('now') - julianday(started_at)) * 86400.0) * (1.0 - $3) / $3 ELSE NULL END
 WHERE id = $1 AND attempt = $2 AND state = 'running'
RETURNING sweep_id
