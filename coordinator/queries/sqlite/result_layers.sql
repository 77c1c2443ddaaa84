SELECT m.job_id, m.layer, m.kept, m.total, m.collapsed, m.weight_norm,
       m.outputs, m.dead_outputs, m.inputs, m.dead_inputs, m.output_layer FROM masks m
 WHERE m.job_id IN (SELECT result_job_id FROM trial_levels WHERE sweep_id = $1) ORDER BY m.job_id, m.ordinal
