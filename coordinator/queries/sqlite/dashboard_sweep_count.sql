SELECT count(*) FROM sweeps WHERE ($1 IS NULL OR state = $1)
