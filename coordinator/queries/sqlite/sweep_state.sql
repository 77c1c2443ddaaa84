SELECT state FROM sweeps WHERE id = $1
