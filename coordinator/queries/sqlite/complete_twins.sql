-- Twins that waited for job $1 (same content hash, ready): done too, reused from it.
UPDATE jobs SET state = 'succeeded', reused_from = $1, progress = 1, eta_seconds = 0, finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
 WHERE content_hash = (SELECT content_hash FROM jobs WHERE id = $1) AND state = 'ready' AND id <> $1
RETURNING id, sweep_id, attempt
