SELECT count(*) AS jobs,
       CAST(COALESCE(sum(CASE WHEN reused_from IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS reused,
       CAST(COALESCE(sum(CASE WHEN kind = 'dense' THEN 1 ELSE 0 END), 0) AS BIGINT) AS dense,
       (SELECT count(*) FROM trials WHERE sweep_id = $1) AS trials
  FROM jobs WHERE sweep_id = $1
