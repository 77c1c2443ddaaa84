-- Up to 2000 level jobs of a submitting sweep, newest first (a job's children are newer than it).
DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE sweep_id = $1 AND kind = 'level' ORDER BY id DESC LIMIT 2000)
