SELECT id, spec, state FROM sweeps WHERE client_token = $1
