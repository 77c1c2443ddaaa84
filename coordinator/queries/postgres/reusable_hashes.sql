-- Succeeded jobs with these content hashes, from any sweep, oldest first: the job holding the results.
SELECT content_hash, COALESCE(reused_from, id) AS src FROM jobs
 WHERE state = 'succeeded' AND content_hash = ANY($1::text[]) ORDER BY id
