-- $8: the registering process ('' = not said, which keeps the process recorded before).
INSERT INTO workers (worker_id, host, gpus, cpus, slots, libtorch_version, cuda_version, instance)
VALUES ($1, $2, $3, $4, $5, $6, $7, NULLIF($8, ''))
ON CONFLICT (worker_id) DO UPDATE SET host = excluded.host, gpus = excluded.gpus, cpus = excluded.cpus,
  slots = excluded.slots, libtorch_version = excluded.libtorch_version, cuda_version = excluded.cuda_version,
  instance = COALESCE(excluded.instance, workers.instance),
  last_seen = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
