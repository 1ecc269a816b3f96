//! What a run did for one source: the part of the `RunReport` that `--output json` prints,
//! the run history records and the tests assert on.

use serde::Serialize;

use crate::error::{EngineError, ErrorKind};

/// What a run did for one source.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SourceReport {
    pub source: String,
    /// `files` or `rest`.
    pub kind: String,
    pub table: String,
    pub table_url: String,
    /// Files found by listing (file sources).
    pub files_listed: usize,
    /// Files ingested by this run (file sources).
    pub files_ingested: usize,
    /// Of those, files ingested again because they changed (`allow_overwrites`).
    pub files_reingested: usize,
    /// Whether this run started the source over and its first commit replaced the table's
    /// rows (`inlet resnapshot`).
    pub started_over: bool,
    /// Pages committed by this run (extractors).
    pub pages: u64,
    /// Requests made, retries included (extractors).
    pub requests: u64,
    /// Files that changed after ingestion and were not ingested again.
    pub changed_files: Vec<ChangedFile>,
    /// Files (or pages) that could not be read; they are retried next run.
    pub failed_files: Vec<FailedFile>,
    /// Files left for a later run because they changed within `debounce_ms` (`settle`).
    pub files_unsettled: usize,
    pub rows: u64,
    pub quarantined: u64,
    /// Input bytes of the files or pages ingested, as stored or received.
    pub bytes: u64,
    pub commits: Vec<CommitReport>,
    /// Latest version of the table after the run.
    pub table_version: Option<i64>,
    pub quarantine_version: Option<i64>,
    /// Columns added to the table by this run.
    pub added_columns: Vec<String>,
    /// Where an extractor stands after the run (its position, as committed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<serde_json::Value>,
    /// How far behind its source the extractor began (database sources).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<crate::source::Lag>,
    /// Commit races lost to another writer and planned again.
    pub conflicts: u32,
    /// When the source started, microseconds since the epoch (UTC).
    pub started_micros: i64,
    pub seconds: f64,
    /// Why the source stopped, if it did.
    pub error: Option<ReportedError>,
    /// The expectations' outcome when the gate failed (a passed gate is in each commit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_gate: Option<inlet_quality::GateReport>,
}

impl SourceReport {
    /// When it ended, microseconds since the epoch (UTC).
    pub fn ended_micros(&self) -> i64 {
        self.started_micros + (self.seconds * 1e6) as i64
    }

    /// A run of the source that found nothing to do and failed at nothing.
    pub fn is_idle(&self) -> bool {
        self.error.is_none() && self.commits.is_empty() && self.changed_files.is_empty() && self.failed_files.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangedFile {
    pub path: String,
    pub size_bytes: u64,
    pub modified_micros: i64,
    pub previous_size_bytes: u64,
    pub previous_modified_micros: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_etag: Option<String>,
    pub previous_load_id: String,
}

/// A unit that could not be read: a file's path, or a page's URL.
#[derive(Debug, Clone, Serialize)]
pub struct FailedFile {
    pub path: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommitReport {
    pub table_version: i64,
    pub txn_version: i64,
    /// Files, or pages, the commit holds.
    pub files: usize,
    pub rows: u64,
    pub quarantined: u64,
    pub quarantine_version: Option<i64>,
    /// The expectations' outcome, as recorded in the commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<inlet_quality::GateReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportedError {
    pub kind: ErrorKind,
    pub retryable: bool,
    /// Another writer committed first.
    pub conflict: bool,
    pub message: String,
}

impl From<&EngineError> for ReportedError {
    fn from(err: &EngineError) -> Self {
        ReportedError {
            kind: err.kind(),
            retryable: err.is_retryable(),
            conflict: err.is_conflict(),
            message: err.to_string(),
        }
    }
}
