//! Uploaded inputs (models, datasets), content-addressed.

use crate::store::error::Result;
use crate::store::types::InputRow;
use sqlx::{FromRow, PgPool};

/// False (and nothing changed) when the digest was already recorded.
pub(crate) async fn record(pool: &PgPool, input: &InputRow) -> Result<bool> {
    let done = sqlx::query(sql!("record_input"))
        .bind(&input.sha256)
        .bind(&input.kind)
        .bind(&input.name)
        .bind(input.bytes)
        .bind(&input.uri)
        .bind(&input.owner)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn find(pool: &PgPool, sha256: &str) -> Result<Option<InputRow>> {
    match sqlx::query(sql!("find_input")).bind(sha256).fetch_optional(pool).await? {
        Some(r) => Ok(Some(InputRow::from_row(&r)?)),
        None => Ok(None),
    }
}

pub(crate) async fn list(pool: &PgPool) -> Result<Vec<InputRow>> {
    let rows = sqlx::query(sql!("list_inputs")).fetch_all(pool).await?;
    Ok(rows.iter().map(InputRow::from_row).collect::<Result<_, _>>()?)
}
