-- Unit-level collapse (issue 12): per layer, the output units (neurons, filters) whose whole fan-in
-- is pruned and the inputs no kept weight reads, as the worker computed them from the mask, and
-- whether the layer is the classifier (its dead outputs are dead classes). NULL: rows of workers
-- that did not report them (before this change); the mask bits alone lack the weight's shape.
ALTER TABLE masks ADD COLUMN outputs BIGINT;
ALTER TABLE masks ADD COLUMN dead_outputs BIGINT;
ALTER TABLE masks ADD COLUMN inputs BIGINT;
ALTER TABLE masks ADD COLUMN dead_inputs BIGINT;
ALTER TABLE masks ADD COLUMN output_layer BOOLEAN;

-- Layers of a ticket with at least one dead unit. dead_classes: the classifier's dead outputs.
CREATE VIEW dead_units AS
SELECT tl.sweep_id, tl.trial_id, tl.metric, tl.rate, tl.seed, tl.level, tl.job_id,
       m.layer, m.ordinal, m.outputs, m.dead_outputs, m.inputs, m.dead_inputs, m.output_layer,
       CASE WHEN m.output_layer THEN m.dead_outputs ELSE 0 END AS dead_classes,
       tl.control, tl.schedule
  FROM trial_levels tl JOIN masks m ON m.job_id = tl.result_job_id
 WHERE m.dead_outputs > 0 OR m.dead_inputs > 0;
