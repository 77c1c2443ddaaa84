-- Raises the reaper's mark ($1: trials with events up to it are closed). The greater of two
-- coordinators' marks wins: each says something true of every trial, whoever closed it.
UPDATE reaper_marks SET trials_closed_through = GREATEST(COALESCE(trials_closed_through, $1), $1) WHERE id = 1
