INSERT INTO workers (worker_id, host, gpus, cpus, slots, libtorch_version, cuda_version)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (worker_id) DO UPDATE SET host = excluded.host, gpus = excluded.gpus, cpus = excluded.cpus,
  slots = excluded.slots, libtorch_version = excluded.libtorch_version, cuda_version = excluded.cuda_version,
  last_seen = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
