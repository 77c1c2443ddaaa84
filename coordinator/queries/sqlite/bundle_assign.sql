-- Records the bundles formed at submit: $1 job ids, $2 their bundle ids (JSON arrays, parallel).
UPDATE jobs SET bundle_id = v.bundle_id
  FROM (SELECT CAST(a.value AS INTEGER) AS id, CAST(b.value AS INTEGER) AS bundle_id
          FROM json_each($1) a JOIN json_each($2) b ON a.key = b.key) AS v
 WHERE jobs.id = v.id
