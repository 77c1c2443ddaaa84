SELECT metric, rate, seed, min(level) AS first_level, max(dead_classes) AS dead FROM dead_units
 WHERE sweep_id = $1 AND dead_classes > 0 AND control IS NULL GROUP BY metric, rate, seed ORDER BY metric, rate, seed LIMIT $2
