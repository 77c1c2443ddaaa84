-- Succeeded jobs with these content hashes, from any sweep, oldest first: the job holding the results.
SELECT content_hash, COALESCE(reused_from, id) AS src FROM jobs
 WHERE state = 'succeeded' AND content_hash IN (SELECT value FROM json_each($1)) ORDER BY id
