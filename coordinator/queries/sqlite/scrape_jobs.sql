-- Job counts by state and unfinished sweep (finished sweeps' jobs together, sweep NULL).
SELECT j.state AS state,
       CASE WHEN s.state IN ('running', 'paused') THEN s.id END AS sweep_id,
       CASE WHEN s.state IN ('running', 'paused') THEN s.name END AS sweep_name,
       count(*) AS count
  FROM jobs j JOIN sweeps s ON s.id = j.sweep_id
 GROUP BY 1, 2, 3
