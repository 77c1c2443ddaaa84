-- The process that registered a worker id last (NULL: it did not say). No row: the id is not
-- registered. (Writes take turns on SQLite: the transaction holds the write lock.)
SELECT instance FROM workers WHERE worker_id = $1
