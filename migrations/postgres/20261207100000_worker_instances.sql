-- Which process of a worker id registered last: a random id each daemon makes at start-up. A
-- registration by another process under the same worker id (the daemon restarted after a crash,
-- or a second daemon started with the same id) re-queues the jobs still leased to the id at once,
-- since the process they were leased to is gone or superseded, instead of after their leases; the
-- earlier process's heartbeats are refused from then on (WORKER_SUPERSEDED) and it stops.
-- NULL: a daemon that does not say (older ones), which is never superseded.
ALTER TABLE workers ADD COLUMN instance TEXT;
