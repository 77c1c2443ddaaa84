UPDATE jobs SET state = 'ready' WHERE state = 'blocked' AND id = ANY($1::bigint[])
