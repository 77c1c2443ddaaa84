//! Completions of many jobs in one statement (`complete.sql`).

use crate::store::error::Result;
use crate::store::pool_wait;
use crate::store::rules::{uploads_needed, Refusal};
use crate::store::types::{stored_number, Completion, Lease};
use sqlx::{PgPool, Row};
use std::collections::HashMap;

/// Completes `items[todo]`. Returns the leases that were refused and why; the others are now
/// succeeded.
pub(crate) async fn complete(pool: &PgPool, items: &[&Completion], todo: &[usize]) -> Result<HashMap<Lease, Refusal>> {
    let n = todo.len();
    let (mut job_ids, mut attempts, mut require, mut diverged, mut device) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut sparsity, mut acc, mut test_loss, mut train_loss, mut epochs, mut wall, mut iters) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let layers: usize = todo.iter().map(|&i| items[i].result.layers.len()).sum();
    let (mut u_out, mut u_dead_out, mut u_in, mut u_dead_in, mut u_final): (Vec<Option<i64>>, Vec<Option<i64>>, Vec<Option<i64>>, Vec<Option<i64>>, Vec<Option<bool>>) =
        (Vec::with_capacity(layers), Vec::with_capacity(layers), Vec::with_capacity(layers), Vec::with_capacity(layers), Vec::with_capacity(layers));
    let (mut m_job, mut m_layer, mut m_ord, mut m_kept, mut m_total, mut m_bits, mut m_collapsed, mut m_norm) = (
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
    );
    for &i in todo {
        let (l, r) = (items[i].lease, &items[i].result);
        job_ids.push(l.job_id);
        attempts.push(l.attempt);
        require.push(items[i].require_uploads);
        diverged.push(r.diverged);
        device.push(r.device.as_str());
        sparsity.push(r.sparsity);
        acc.push(r.test_accuracy);
        test_loss.push(stored_number(r.test_loss));
        train_loss.push(stored_number(r.train_loss));
        epochs.push(r.epochs);
        wall.push(r.wall_seconds);
        iters.push(r.iterations as i64);
        for (k, layer) in r.layers.iter().enumerate() {
            m_job.push(l.job_id);
            m_layer.push(layer.name.as_str());
            m_ord.push(k as i32);
            m_kept.push(layer.kept as i64);
            m_total.push(layer.total as i64);
            m_bits.push(layer.bits.as_slice());
            m_collapsed.push(layer.collapsed);
            m_norm.push(stored_number(layer.weight_norm));
            u_out.push(layer.units.map(|u| u.outputs as i64));
            u_dead_out.push(layer.units.map(|u| u.dead_outputs as i64));
            u_in.push(layer.units.map(|u| u.inputs as i64));
            u_dead_in.push(layer.units.map(|u| u.dead_inputs as i64));
            u_final.push(layer.units.map(|u| u.output_layer));
        }
    }
    let rows = sqlx::query(sql!("complete"))
        .bind(&job_ids)
        .bind(&attempts)
        .bind(&sparsity)
        .bind(&acc)
        .bind(&test_loss)
        .bind(&train_loss)
        .bind(&epochs)
        .bind(&wall)
        .bind(&iters)
        .bind(&m_job)
        .bind(&m_layer)
        .bind(&m_ord)
        .bind(&m_kept)
        .bind(&m_total)
        .bind(&m_bits)
        .bind(&m_collapsed)
        .bind(&m_norm)
        .bind(&require)
        .bind(uploads_needed("dense"))
        .bind(uploads_needed("level"))
        .bind(&u_out)
        .bind(&u_dead_out)
        .bind(&u_in)
        .bind(&u_dead_in)
        .bind(&u_final)
        .bind(&diverged)
        .bind(&device)
        .fetch_all(&mut *pool_wait::acquire(pool, "complete").await?)
        .await?;
    let mut refused = HashMap::with_capacity(rows.len());
    for r in &rows {
        let lease = Lease { job_id: r.try_get("job_id")?, attempt: r.try_get("attempt")? };
        let state: Option<String> = r.try_get("state")?;
        let (attempt, missing) = if state.is_some() { (r.try_get("current_attempt")?, r.try_get("missing")?) } else { (0, Vec::new()) };
        let model: Option<Vec<String>> = r.try_get("bad_layers_model")?;
        refused.insert(lease, Refusal::of(lease, state, attempt, missing, model));
    }
    Ok(refused)
}
