-- Layer ordinals in network order for rows written before the engine reported layers that way.
--
-- Until the worker change "layers in network order" (commit 57336e5), the engine listed a model's
-- layers sorted by name, and `masks.ordinal` is the position in that list: LeNet-300-100's output
-- layer `fc.weight` came first and VGG-16's `layers.10` before `layers.2`. Workers since then
-- report PyTorch's state_dict order, and so do the ordinals they store.
--
-- For the built-in models the network order follows from the layer names alone, so old rows are
-- renumbered here: the stem convolution (`conv.weight`, `conv1.weight`) first, then the body in
-- order of its module index (`layers.N`, `fc_layers.N`; ResNet block names are single digits and
-- already sort in network order), the classifier `fc.weight` last. A job counts as old when its
-- ordinals are exactly the byte order of its layer names and every masked layer is a `.weight`
-- (the only layers the old engine pruned). A job whose name order happens to be its network order
-- keeps the same ordinals either way. TorchScript models arrived with network order, so none of
-- their rows is old; their layer names carry no order and they are not touched.
WITH builtin AS (
    SELECT j.id AS job_id
      FROM jobs j JOIN sweeps s ON s.id = j.sweep_id
     WHERE jsonb_typeof(s.spec -> 'model') = 'string'
       AND s.spec ->> 'model' IN ('resnet18', 'resnet18_imagenet', 'resnet20', 'vgg16', 'lenet300100')
), ranked AS (
    SELECT m.job_id, m.layer, m.ordinal,
           row_number() OVER (PARTITION BY m.job_id ORDER BY m.layer COLLATE "C") - 1 AS by_name,
           row_number() OVER (
               PARTITION BY m.job_id
               ORDER BY CASE WHEN m.layer IN ('conv.weight', 'conv1.weight') THEN 0
                             WHEN m.layer = 'fc.weight' THEN 2 ELSE 1 END,
                        CASE WHEN substr(m.layer, 1, 7) = 'layers.' OR substr(m.layer, 1, 10) = 'fc_layers.'
                             THEN split_part(m.layer, '.', 2)::int ELSE 0 END,
                        m.layer COLLATE "C") - 1 AS by_network
      FROM masks m JOIN builtin b ON b.job_id = m.job_id
), old_jobs AS (
    SELECT job_id FROM ranked
     GROUP BY job_id
    HAVING bool_and(ordinal = by_name) AND bool_and(right(layer, 7) = '.weight')
)
UPDATE masks m SET ordinal = r.by_network
  FROM ranked r JOIN old_jobs o ON o.job_id = r.job_id
 WHERE m.job_id = r.job_id AND m.layer = r.layer AND m.ordinal <> r.by_network;
