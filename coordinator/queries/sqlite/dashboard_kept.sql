SELECT metric, rate, level, layer, ordinal, CAST(avg(kept_fraction) AS DOUBLE PRECISION) AS kept_fraction,
       CAST(max(CASE WHEN collapsed THEN 1 ELSE 0 END) AS INTEGER) AS collapsed
  FROM layer_kept_fraction WHERE sweep_id = $1 AND control IS NULL AND schedule IS NULL
 GROUP BY metric, rate, level, layer, ordinal ORDER BY metric, rate, ordinal, level
