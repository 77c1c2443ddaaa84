-- Cascades to the sweep's trials, dense jobs and events.
DELETE FROM sweeps WHERE id = $1 AND state = 'submitting'
