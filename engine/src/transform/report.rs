//! What a run did for one derived table: the part of the `RunReport` tests assert on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::WriteMode;
use crate::run::ReportedError;

/// Rows a run changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCounts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
}

/// One backfill window of a `replace_partitions` table: the rows whose partition column
/// `column` has `value` (a day, `YYYY-MM-DD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub column: String,
    pub value: String,
}

/// How a table's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableStatus {
    /// A new version was committed.
    Committed,
    /// Nothing changed upstream (or the result changed nothing): no new version.
    UpToDate,
    /// Not run: an upstream table failed, or has no data yet.
    Skipped,
    Failed,
}

/// What a run did for one derived table.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    pub write: WriteMode,
    pub status: TableStatus,
    /// Why it was skipped or up to date.
    pub reason: Option<String>,
    pub table_version: Option<i64>,
    pub upstream: BTreeMap<String, i64>,
    pub rows: RowCounts,
    /// Rows that broke a quarantine expectation, written to `<table>__quarantine`.
    pub quarantined: u64,
    /// The expectations' outcome (also when the gate failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<inlet_quality::GateReport>,
    /// When the table started, microseconds since the epoch (UTC).
    pub started_micros: i64,
    pub seconds: f64,
    pub error: Option<ReportedError>,
}

impl TableReport {
    /// When it ended, microseconds since the epoch (UTC).
    pub fn ended_micros(&self) -> i64 {
        self.started_micros + (self.seconds * 1e6) as i64
    }

    pub fn new(table: &str, write: WriteMode) -> Self {
        TableReport {
            table: table.to_owned(),
            write,
            status: TableStatus::Skipped,
            reason: None,
            table_version: None,
            upstream: BTreeMap::new(),
            rows: RowCounts::default(),
            quarantined: 0,
            quality: None,
            started_micros: chrono::Utc::now().timestamp_micros(),
            seconds: 0.0,
            error: None,
        }
    }
}
