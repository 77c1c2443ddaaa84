SELECT id FROM sweeps WHERE state = 'submitting' ORDER BY id
