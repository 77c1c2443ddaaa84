INSERT INTO events (sweep_id, kind, detail) VALUES ($1, 'sweep', $2)
