//! `SweepService.StreamMasks`: a sweep's kept-weight masks, one layer per message.
//!
//! Self-contained on purpose (one handler, its own two statements per backend), so that it moved
//! as a unit when the service became `rpc/`. GetResults carries the per-layer
//! counts; this carries the bits behind them, for `lthctl export --what masks` and the report's
//! ticket-overlap plot.
//!
//! The masks of a sweep outgrow any single message (ResNet-18: 1.4 MB per job, hundreds of jobs),
//! so they are streamed, and read in pages of a few jobs: no database connection or transaction is
//! held while a slow client reads, and memory stays at one page whatever the sweep's size.

use crate::store::Store;
use futures::Stream;
use lth_proto::v1 as pb;
use sqlx::Row;
use std::collections::BTreeMap;
use std::pin::Pin;
use tonic::Status;

pub type MaskStream = Pin<Box<dyn Stream<Item = Result<pb::LayerMask, Status>> + Send>>;

/// Jobs whose masks one statement reads (ResNet-18: ~11 MB of bits per page).
const JOBS_PER_PAGE: usize = 8;

/// (job id as GetResults names it, job whose results it carries): a reused job's results, masks
/// included, live under the job it reuses. Tickets only: a control's mask is its ticket's
/// (reinit) or a random one (random_mask), and clients label masks by (metric, rate, seed, level).
fn jobs_sql(levels: usize) -> String {
    let mut sql = String::from("SELECT DISTINCT job_id, result_job_id FROM trial_levels WHERE sweep_id = $1 AND control IS NULL");
    if levels > 0 {
        let placeholders: Vec<String> = (0..levels).map(|i| format!("${}", i + 2)).collect();
        sql.push_str(&format!(" AND level IN ({})", placeholders.join(", ")));
    }
    sql.push_str(" ORDER BY job_id");
    sql
}

/// The masks of some result jobs; `bits` as packed bytes on both backends (Postgres stores a
/// `bit varying`: `varbit_send` is its wire form, a 4-byte bit length and then the bytes, MSB-first
/// with zero padding, exactly the SQLite BLOB).
fn masks_sql(postgres: bool, jobs: usize) -> String {
    let bits = if postgres { "substring(varbit_send(bits) from 5)" } else { "bits" };
    let placeholders: Vec<String> = (0..jobs).map(|i| format!("${}", i + 1)).collect();
    format!(
        "SELECT job_id, layer, ordinal, kept, total, {bits} AS bits FROM masks WHERE job_id IN ({}) ORDER BY job_id, ordinal",
        placeholders.join(", ")
    )
}

fn db_status(e: sqlx::Error) -> Status {
    tracing::error!(error = %e, "reading masks");
    lth_proto::errors::unavailable(format!("database error while reading masks: {e}; retry"))
}

/// One page of masks, keyed by the result job that holds them.
type Page = BTreeMap<i64, Vec<pb::LayerMask>>;

async fn read_jobs(store: &Store, sweep_id: i64, levels: &[i32]) -> Result<Vec<(i64, i64)>, Status> {
    let sql = jobs_sql(levels.len());
    match store {
        Store::Postgres(pool) => {
            let mut q = sqlx::query_as::<_, (i64, i64)>(&sql).bind(sweep_id);
            for l in levels {
                q = q.bind(*l);
            }
            q.fetch_all(pool).await.map_err(db_status)
        }
        Store::Sqlite(pool) => {
            let mut q = sqlx::query_as::<_, (i64, i64)>(&sql).bind(sweep_id);
            for l in levels {
                q = q.bind(*l);
            }
            q.fetch_all(pool).await.map_err(db_status)
        }
    }
}

async fn read_page(store: &Store, result_jobs: &[i64]) -> Result<Page, Status> {
    fn layer<R: Row>(r: &R) -> Result<(i64, pb::LayerMask), sqlx::Error>
    where
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        i32: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let ordinal: i32 = r.try_get("ordinal")?;
        let kept: i64 = r.try_get("kept")?;
        let total: i64 = r.try_get("total")?;
        Ok((
            r.try_get("job_id")?,
            pb::LayerMask {
                job_id: 0,
                layer: r.try_get("layer")?,
                ordinal: ordinal.max(0) as u32,
                kept: kept.max(0) as u64,
                total: total.max(0) as u64,
                mask_bits: r.try_get("bits")?,
            },
        ))
    }
    let mut page = Page::new();
    match store {
        Store::Postgres(pool) => {
            let sql = masks_sql(true, result_jobs.len());
            let mut q = sqlx::query(&sql);
            for j in result_jobs {
                q = q.bind(*j);
            }
            for r in q.fetch_all(pool).await.map_err(db_status)? {
                let (job, mask) = layer(&r).map_err(db_status)?;
                page.entry(job).or_default().push(mask);
            }
        }
        Store::Sqlite(pool) => {
            let sql = masks_sql(false, result_jobs.len());
            let mut q = sqlx::query(&sql);
            for j in result_jobs {
                q = q.bind(*j);
            }
            for r in q.fetch_all(pool).await.map_err(db_status)? {
                let (job, mask) = layer(&r).map_err(db_status)?;
                page.entry(job).or_default().push(mask);
            }
        }
    }
    Ok(page)
}

async fn sweep_exists(store: &Store, sweep_id: i64) -> Result<bool, Status> {
    let sql = "SELECT count(*) FROM sweeps WHERE id = $1";
    let n: i64 = match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).bind(sweep_id).fetch_one(pool).await,
        Store::Sqlite(pool) => sqlx::query_scalar(sql).bind(sweep_id).fetch_one(pool).await,
    }
    .map_err(db_status)?;
    Ok(n > 0)
}

/// The handler: checks the request, lists the jobs, then streams their masks page by page.
pub async fn stream_masks(store: &Store, req: pb::StreamMasksRequest) -> Result<MaskStream, Status> {
    let sweep_id = req.sweep_id;
    let levels: Vec<i32> = req
        .levels
        .iter()
        .map(|l| i32::try_from(*l).map_err(|_| lth_proto::errors::invalid_argument(format!("level {l} is out of range"))))
        .collect::<Result<_, _>>()?;
    if !sweep_exists(store, sweep_id).await? {
        return Err(lth_proto::errors::not_found(format!("sweep {sweep_id} does not exist: `lthctl ls` lists the sweeps")));
    }
    let jobs = read_jobs(store, sweep_id, &levels).await?;
    let store = store.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        for chunk in jobs.chunks(JOBS_PER_PAGE) {
            let mut result_jobs: Vec<i64> = chunk.iter().map(|(_, r)| *r).collect();
            result_jobs.sort_unstable();
            result_jobs.dedup();
            let page = match read_page(&store, &result_jobs).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            for (job_id, result_job_id) in chunk {
                for mask in page.get(result_job_id).into_iter().flatten() {
                    let mask = pb::LayerMask { job_id: *job_id, ..mask.clone() };
                    if tx.send(Ok(mask)).await.is_err() {
                        return; // the client went away
                    }
                }
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_number_their_placeholders() {
        assert_eq!(jobs_sql(0), "SELECT DISTINCT job_id, result_job_id FROM trial_levels WHERE sweep_id = $1 AND control IS NULL ORDER BY job_id");
        assert!(jobs_sql(2).contains("AND level IN ($2, $3) ORDER BY job_id"));
        assert!(masks_sql(false, 3).contains("job_id IN ($1, $2, $3)"));
        assert!(masks_sql(true, 1).contains("substring(varbit_send(bits) from 5) AS bits"));
    }
}
