//! What a table's quarantine holds, for `inlet quarantine` and the dashboard: rows still
//! quarantined (a replay's landed rows have left) by rule or error code, and samples.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use url::Url;

use crate::error::Result;
use crate::schema::REPLAYED_VERSION;

/// Quarantined rows of `table` by reason (the rule, else the error code): how many, from
/// how many loads, when, and one message. No rows when nothing was ever quarantined.
pub async fn summary(lake: &Url, table: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let quarantine = quarantine_name(table);
    let opened = crate::query::open(lake, &quarantine).await?;
    let Some(still) = still_quarantined(&opened)? else {
        return Ok((Arc::new(Schema::empty()), Vec::new()));
    };
    let sql = format!(
        "SELECT COALESCE(_error_rule, _error_code) AS reason, _error_code AS code, COUNT(*) AS rows, \
         COUNT(DISTINCT _load_id) AS loads, MIN(_ingested_at) AS first_at, MAX(_ingested_at) AS last_at, \
         MIN(_error_message) AS example \
         FROM {quarantine} WHERE {still} GROUP BY 1, 2 ORDER BY rows DESC, reason"
    );
    crate::query::run_on(&opened, &quarantine, &sql).await
}

/// Up to `limit` quarantined rows of `table` for `reason` (a rule or an error code), newest
/// first, every column as it is stored.
pub async fn samples(lake: &Url, table: &str, reason: &str, limit: usize) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let quarantine = quarantine_name(table);
    let opened = crate::query::open(lake, &quarantine).await?;
    let Some(still) = still_quarantined(&opened)? else {
        return Ok((Arc::new(Schema::empty()), Vec::new()));
    };
    let reason = reason.replace('\'', "''");
    let sql = format!(
        "SELECT * FROM {quarantine} WHERE {still} AND COALESCE(_error_rule, _error_code) = '{reason}' \
         ORDER BY _ingested_at DESC LIMIT {limit}"
    );
    crate::query::run_on(&opened, &quarantine, &sql).await
}

fn quarantine_name(table: &str) -> String {
    format!("{table}{}", crate::config::QUARANTINE_SUFFIX)
}

/// The condition rows still quarantined meet, `None` when the quarantine does not exist.
fn still_quarantined(opened: &crate::table::Table) -> Result<Option<String>> {
    let Some(schema) = opened.arrow_schema()? else {
        return Ok(None);
    };
    // Rows a replay landed have left the quarantine.
    Ok(Some(match schema.field_with_name(REPLAYED_VERSION) {
        Ok(_) => format!("{REPLAYED_VERSION} IS NULL"),
        Err(_) => "true".to_owned(),
    }))
}
