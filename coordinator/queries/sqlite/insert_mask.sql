-- One layer's mask (bits: a BLOB, MSB-first); replaced when the job re-runs for a repair.
INSERT INTO masks (job_id, layer, ordinal, kept, total, bits, collapsed, weight_norm, outputs, dead_outputs, inputs, dead_inputs, output_layer)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (job_id, layer) DO UPDATE SET ordinal = excluded.ordinal, kept = excluded.kept, total = excluded.total, bits = excluded.bits,
  collapsed = excluded.collapsed, weight_norm = excluded.weight_norm, outputs = excluded.outputs, dead_outputs = excluded.dead_outputs,
  inputs = excluded.inputs, dead_inputs = excluded.dead_inputs, output_layer = excluded.output_layer
