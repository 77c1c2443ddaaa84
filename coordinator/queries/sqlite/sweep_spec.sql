SELECT spec FROM sweeps WHERE id = $1
