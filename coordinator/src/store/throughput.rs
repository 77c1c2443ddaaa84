//! Measured training throughput: where each finished job ran, and the `measured_throughput` view
//! over those rows that `lthctl submit --dry-run` estimates hours from.
//!
//! One SQL statement per file under `coordinator/queries/{postgres,sqlite}/`.

use super::{BeginWrite, Result, Store};
use sqlx::Row;

/// One row of the `measured_throughput` view.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    pub model: String,
    pub batch_size: u32,
    pub precision: String,
    pub device: String,
    pub jobs: u64,
    pub images: u64,
    pub seconds: f64,
    pub images_per_second: f64,
}

impl Store {
    /// Records where jobs that just completed ran (`(job id, device)`, devices non-empty).
    pub async fn record_devices(&self, devices: &[(i64, &str)]) -> Result<()> {
        if devices.is_empty() {
            return Ok(());
        }
        match self {
            Store::Postgres(pool) => {
                let ids: Vec<i64> = devices.iter().map(|d| d.0).collect();
                let names: Vec<&str> = devices.iter().map(|d| d.1).collect();
                sqlx::query(include_str!("../../queries/postgres/record_devices.sql")).bind(&ids).bind(&names).execute(pool).await?;
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_write().await?;
                for (id, device) in devices {
                    sqlx::query(include_str!("../../queries/sqlite/record_device.sql")).bind(id).bind(device).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The `measured_throughput` view, ordered by model, batch size, precision, device.
    pub async fn measured_throughput(&self) -> Result<Vec<Throughput>> {
        // The same decoding for both backends' rows.
        macro_rules! decode {
            ($rows:expr) => {
                $rows
                    .iter()
                    .map(|r| -> std::result::Result<Throughput, sqlx::Error> {
                        Ok(Throughput {
                            model: r.try_get("model")?,
                            batch_size: r.try_get::<i64, _>("batch_size")?.clamp(0, i64::from(u32::MAX)) as u32,
                            precision: r.try_get("precision")?,
                            device: r.try_get("device")?,
                            jobs: r.try_get::<i64, _>("jobs")?.max(0) as u64,
                            images: r.try_get::<i64, _>("images")?.max(0) as u64,
                            seconds: r.try_get("seconds")?,
                            images_per_second: r.try_get("images_per_second")?,
                        })
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?
            };
        }
        Ok(match self {
            Store::Postgres(pool) => decode!(sqlx::query(include_str!("../../queries/postgres/measured_throughput.sql")).fetch_all(pool).await?),
            Store::Sqlite(pool) => decode!(sqlx::query(include_str!("../../queries/sqlite/measured_throughput.sql")).fetch_all(pool).await?),
        })
    }
}
