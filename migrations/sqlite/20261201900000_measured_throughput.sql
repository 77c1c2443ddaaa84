-- Where each finished job ran ("cpu", "cuda NVIDIA H200"), as its worker reported it, so that
-- estimates can come from measured throughput (lthctl submit --dry-run). Kept apart from
-- level_results: written after the completion, and a missing row only means "not measured".
CREATE TABLE job_devices (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    device TEXT NOT NULL CHECK (device <> '')
);

-- End-to-end training throughput of finished jobs per (model, batch size, precision, device):
-- images trained (iterations x batch size) over the job's wall time (training, evaluation,
-- checkpoints). First attempts only: a job resumed from a checkpoint trained only part of its
-- iterations in the wall time it reports. Reused jobs have no row of their own.
CREATE VIEW measured_throughput AS
SELECT model, batch_size, precision, device,
       count(*) AS jobs,
       sum(images) AS images,
       sum(wall_seconds) AS seconds,
       sum(images) / sum(wall_seconds) AS images_per_second
  FROM (SELECT CASE json_type(s.spec, '$.model') WHEN 'text' THEN json_extract(s.spec, '$.model')
                    ELSE 'torchscript:' || COALESCE(json_extract(s.spec, '$.model.sha256'), '') END AS model,
               CAST(json_extract(s.spec, '$.recipe.batch_size') AS INTEGER) AS batch_size,
               json_extract(s.spec, '$.recipe.precision') AS precision,
               d.device,
               r.iterations * CAST(json_extract(s.spec, '$.recipe.batch_size') AS INTEGER) AS images,
               r.wall_seconds
          FROM level_results r
          JOIN jobs j ON j.id = r.job_id
          JOIN sweeps s ON s.id = j.sweep_id
          JOIN job_devices d ON d.job_id = r.job_id
         WHERE j.attempt = 1 AND r.wall_seconds > 0 AND r.iterations > 0) m
 GROUP BY model, batch_size, precision, device;
