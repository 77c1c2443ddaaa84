UPDATE jobs SET state = 'ready' WHERE state = 'blocked' AND id IN (SELECT value FROM json_each($1))
