-- sweep_metrics.sql for the sweeps list_sweeps.sql lists.
SELECT sweep_id, metric, count(*) AS n, CAST(COALESCE(sum(CASE WHEN state = 'succeeded' THEN 1 ELSE 0 END), 0) AS BIGINT) AS done
  FROM jobs WHERE sweep_id IN (SELECT id FROM sweeps ORDER BY id DESC LIMIT $1) AND kind = 'level' GROUP BY sweep_id, metric ORDER BY sweep_id, metric
