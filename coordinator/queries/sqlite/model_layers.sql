-- The prunable layers of the level job $1, as its dense job reported them, in network order.
SELECT m.layer FROM jobs x
  JOIN jobs r ON r.id = x.dense_job_id
  JOIN masks m ON m.job_id = COALESCE(r.reused_from, r.id)
 WHERE x.kind = 'level' AND x.id = $1 ORDER BY m.ordinal
