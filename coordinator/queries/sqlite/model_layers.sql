-- The prunable layers of each level job in $1 (a JSON array), as its dense job reported them, in network order.
SELECT x.id AS for_job, m.layer FROM jobs x
  JOIN jobs r ON r.id = x.dense_job_id
  JOIN masks m ON m.job_id = COALESCE(r.reused_from, r.id)
 WHERE x.kind = 'level' AND x.id IN (SELECT value FROM json_each($1)) ORDER BY x.id, m.ordinal
