-- ticket_overlap on SQLite, as on Postgres (tickets only, same schedule). SQLite has no bit strings: masks are BLOBs, and
-- shared_bits(a, b [, c]) (popcount of the AND) and differing_bits(a, b) (popcount of the XOR) are
-- C functions the coordinator registers on every connection it opens (coordinator/src/store/
-- sqlite_fns.rs). The sqlite3 shell lacks them, so this view works there only after loading them
-- (docs/sql.md shows Python's create_function); every other view works in the shell as it is.
CREATE VIEW ticket_overlap AS
SELECT a.sweep_id, a.rate, a.seed, a.level,
       a.metric AS metric_a, b.metric AS metric_b,
       sum(ma.kept) AS kept_a,
       sum(mb.kept) AS kept_b,
       sum(shared_bits(ma.bits, mb.bits)) AS shared,
       CAST(sum(shared_bits(ma.bits, mb.bits)) AS REAL)
         / NULLIF(sum(ma.kept) + sum(mb.kept) - sum(shared_bits(ma.bits, mb.bits)), 0) AS jaccard,
       a.schedule
  FROM trial_levels a
  JOIN trial_levels b
    ON b.sweep_id = a.sweep_id AND b.rate = a.rate AND b.seed = a.seed AND b.level = a.level
   AND b.schedule IS a.schedule
   AND a.metric < b.metric AND a.control IS NULL AND b.control IS NULL
  JOIN masks ma ON ma.job_id = a.result_job_id
  JOIN masks mb ON mb.job_id = b.result_job_id AND mb.layer = ma.layer
 GROUP BY a.sweep_id, a.rate, a.seed, a.level, a.metric, b.metric, a.schedule;
