-- The owner of a sweep, as an existence and ownership check (no counts).
SELECT owner FROM sweeps WHERE id = $1
