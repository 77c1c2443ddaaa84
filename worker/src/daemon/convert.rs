//! Wire types to engine types: a `JobAssignment` becomes the engine's `StepSpec`. (The engine's
//! result goes back as `lth_sweep::result::LevelResult`, whose wire conversion is the sweep
//! crate's.)
//!
//! Conversion errors are deterministic (the spec itself is wrong), so a job that fails here is
//! failed as not retryable.

use crate::engine::StepSpec;
use anyhow::{anyhow, bail, Result};
use lth_proto::v1 as pb;
use lth_sweep::{Control, ImportanceMetric, SweepSpec};

/// The engine's description of the job's chain step. The sweep spec goes through `lth_sweep`'s own
/// proto conversion (with its validation), so the worker reads exactly what lthctl submitted.
pub fn step_spec(job: &pb::JobAssignment) -> Result<StepSpec> {
    let wire = job.spec.as_ref().ok_or_else(|| anyhow!("job {} has no sweep spec", job.job_id))?;
    let spec = SweepSpec::try_from(wire).map_err(|e| anyhow!("the job's sweep spec is invalid: {e}"))?;
    let dense = match pb::JobKind::try_from(job.kind) {
        Ok(pb::JobKind::Dense) => true,
        Ok(pb::JobKind::Level) => false,
        _ => job.level == 0,
    };
    let metric = if dense {
        None
    } else {
        Some(ImportanceMetric::from_proto_i32(job.metric).map_err(|e| anyhow!("a pruning-level job needs an importance metric: {e}"))?)
    };
    if !dense && job.level == 0 {
        bail!("job {} is a pruning-level job at level 0; level 0 is the dense job", job.job_id);
    }
    Ok(StepSpec {
        model: spec.model,
        dataset: spec.dataset,
        recipe: spec.recipe,
        pruning: spec.pruning,
        seed: job.seed,
        metric,
        rate: if dense { 0.0 } else { job.rate },
        level: job.level,
        control: match pb::Control::try_from(job.control) {
            Ok(pb::Control::Unspecified) => None,
            Ok(pb::Control::Reinit) => Some(Control::Reinit),
            Ok(pb::Control::RandomMask) => Some(Control::RandomMask),
            Err(_) => bail!("job {} names an unknown control number {}", job.job_id, job.control),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_round_trips_the_submitted_spec() {
        let spec: SweepSpec = toml::from_str(
            r#"
            name = "t"
            model = "lenet300100"
            dataset = { name = "digits" }
            metrics = ["l2", "min_max"]
            rates = [0.2]
            seeds = [3]
            levels = 2
            [recipe]
            length = "3ep"
            batch_size = 64
            lr = 0.05
            schedule = { kind = "step", milestones = ["2ep"], gamma = 0.5 }
            rewind = "10it"
            checkpoint_every = "0it"
            augment = false
            [pruning]
            min_keep_fraction = 0.01
            "#,
        )
        .unwrap();
        let mut job = pb::JobAssignment {
            job_id: 9,
            kind: pb::JobKind::Level as i32,
            spec: Some((&spec).into()),
            seed: 3,
            metric: pb::ImportanceMetric::MinMax as i32,
            rate: 0.2,
            level: 2,
            ..Default::default()
        };
        let step = step_spec(&job).unwrap();
        assert_eq!((step.model, &step.dataset, &step.recipe, &step.pruning), (spec.model, &spec.dataset, &spec.recipe, &spec.pruning));
        assert_eq!((step.seed, step.metric, step.rate, step.level), (3, Some(ImportanceMetric::MinMax), 0.2, 2));

        job.kind = pb::JobKind::Dense as i32;
        job.level = 0;
        job.metric = 0;
        job.control = pb::Control::RandomMask as i32;
        assert_eq!(step_spec(&job).unwrap().control, Some(Control::RandomMask));
        job.control = 7;
        assert!(step_spec(&job).unwrap_err().to_string().contains("unknown control"));
        job.control = 0;

        let dense = step_spec(&job).unwrap();
        assert_eq!((dense.metric, dense.rate, dense.level), (None, 0.0, 0));

        job.kind = pb::JobKind::Level as i32;
        job.level = 1;
        job.metric = 0;
        assert!(step_spec(&job).unwrap_err().to_string().contains("importance metric"));
        job.spec = None;
        assert!(step_spec(&job).is_err());
    }
}
