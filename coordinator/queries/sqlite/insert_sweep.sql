-- A sweep being submitted: claimable by no one until open_sweep.sql makes it running.
INSERT INTO sweeps (client_token, name, spec, state, priority, max_attempts, owner)
VALUES ($1, $2, $3, 'submitting', $4, $5, $6) ON CONFLICT (client_token) DO NOTHING RETURNING id
