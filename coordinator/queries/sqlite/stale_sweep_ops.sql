-- Paced operations nobody touched for $1 seconds: their writer stopped.
SELECT sweep_id, op FROM unfinished_sweep_ops
 WHERE touched_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('-%.3f seconds', $1))
 ORDER BY sweep_id, op
