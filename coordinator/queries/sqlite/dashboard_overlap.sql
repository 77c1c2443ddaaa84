SELECT rate, metric_a, metric_b, CAST(avg(jaccard) AS DOUBLE PRECISION) AS jaccard, count(*) AS seeds
  FROM ticket_overlap WHERE sweep_id = $1 AND level = $2 AND schedule IS NULL
 GROUP BY rate, metric_a, metric_b ORDER BY rate, metric_a, metric_b
