-- Records the bundles formed at submit: $1 job ids, $2 their bundle ids (parallel arrays).
UPDATE jobs j SET bundle_id = v.bundle_id
  FROM unnest($1::bigint[], $2::bigint[]) AS v(id, bundle_id)
 WHERE j.id = v.id
