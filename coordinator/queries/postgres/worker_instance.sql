-- The process that registered a worker id last (NULL: it did not say), locking the worker's row
-- so that two registrations under one id take turns. No row: the id is not registered.
SELECT instance FROM workers WHERE worker_id = $1 FOR UPDATE
