-- Layer ordinals in network order for rows written before the engine reported layers that way.
-- The same renumbering as the Postgres migration of the same name (see its comment): built-in
-- models only, jobs whose ordinals are exactly the byte order of their (all `.weight`) layer names;
-- the stem convolution first, the body by module index (`layers.N`, `fc_layers.N`), `fc.weight`
-- last. SQLite's default collation is byte order; CAST of '10.conv.weight' AS INTEGER reads 10.
WITH builtin AS (
    SELECT j.id AS job_id
      FROM jobs j JOIN sweeps s ON s.id = j.sweep_id
     WHERE json_type(s.spec, '$.model') = 'text'
       AND json_extract(s.spec, '$.model') IN ('resnet18', 'resnet18_imagenet', 'resnet20', 'vgg16', 'lenet300100')
), ranked AS (
    SELECT m.job_id, m.layer, m.ordinal,
           row_number() OVER (PARTITION BY m.job_id ORDER BY m.layer) - 1 AS by_name,
           row_number() OVER (
               PARTITION BY m.job_id
               ORDER BY CASE WHEN m.layer IN ('conv.weight', 'conv1.weight') THEN 0
                             WHEN m.layer = 'fc.weight' THEN 2 ELSE 1 END,
                        CASE WHEN substr(m.layer, 1, 7) = 'layers.' OR substr(m.layer, 1, 10) = 'fc_layers.'
                             THEN CAST(substr(m.layer, instr(m.layer, '.') + 1) AS INTEGER) ELSE 0 END,
                        m.layer) - 1 AS by_network
      FROM masks m JOIN builtin b ON b.job_id = m.job_id
), old_jobs AS (
    SELECT job_id FROM ranked
     GROUP BY job_id
    HAVING min(ordinal = by_name) = 1 AND min(substr(layer, -7) = '.weight') = 1
)
UPDATE masks SET ordinal = (SELECT r.by_network FROM ranked r WHERE r.job_id = masks.job_id AND r.layer = masks.layer)
 WHERE job_id IN (SELECT job_id FROM old_jobs);
