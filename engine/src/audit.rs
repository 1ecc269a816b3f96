//! What happened to a table, version by version: the run history and the audit trail.
//!
//! Each version's story is read from its commit in the `_delta_log` ([`VersionRecord`]): the
//! operation, the run, the rows, the upstream versions a derived table read, the files a
//! source ingested, the expectations' outcome. Every `inlet run` also appends, to the run
//! history table `<lake>/_inlet/runs` (plain Delta), one row per source and derived table
//! with the records of the versions it committed, so the story survives log cleanup after
//! a checkpoint, and a run that committed nothing (a failed gate) is on record too.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{EngineError, Result};
use crate::expect::QUALITY_KEY;
use crate::ingest::position::{COMMIT_INFO_KEY, PageCounts, SourceCommit};
use crate::log::LogCommit;
use crate::run::RunReport;
use crate::schema::timestamp_type;
use crate::table::{Commit, Table};

mod read;
pub use read::{RunFilter, RunRecord, RunSummary, mirrored_records, runs, summaries};

/// Where the run history lives, under the lake.
pub const RUNS_PATH: &str = "_inlet/runs/";
/// The run history's name in errors and logs.
pub const RUNS_TABLE: &str = "_inlet.runs";

/// One version of a table, as its commit tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: i64,
    /// Commit time, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    pub operation: Option<String>,
    /// The run (load id) that made it, when inlet did.
    pub run_id: Option<String>,
    /// Rows written (sources), or inserted / updated / deleted / unchanged (derived tables).
    pub rows: Option<serde_json::Value>,
    /// Upstream tables and the versions read (derived tables).
    #[serde(default)]
    pub upstream: BTreeMap<String, i64>,
    /// Source files ingested (file sources).
    #[serde(default)]
    pub files: Vec<String>,
    /// Pages ingested (extractors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<PageCounts>,
    pub quality: Option<inlet_quality::GateReport>,
    pub user_metadata: Option<String>,
    /// Data files added and removed.
    pub files_added: usize,
    pub files_removed: usize,
    /// The commit changed the table's schema, properties or protocol.
    #[serde(default)]
    pub schema_changed: bool,
    /// Where this record was read: `log` or `run history`.
    #[serde(default)]
    pub from: String,
}

impl VersionRecord {
    /// What a commit tells of its version.
    pub fn from_log(table: &str, commit: &LogCommit) -> Result<VersionRecord> {
        let mut record = VersionRecord {
            timestamp_ms: commit.timestamp_ms,
            operation: commit.operation.clone(),
            user_metadata: commit.user_metadata.clone(),
            files_added: commit.adds.len(),
            files_removed: commit.removes.len(),
            schema_changed: commit.changes_table,
            ..VersionRecord::unknown(commit.version, "log")
        };
        if let Some(source) = commit.info::<SourceCommit>(table, COMMIT_INFO_KEY)? {
            record.run_id = Some(source.load_id.clone());
            record.rows = Some(serde_json::json!({ "rows": source.rows(), "quarantined": source.quarantined() }));
            record.files = source.files.iter().map(|f| f.path.clone()).collect();
            if let Some(pages) = &source.pages {
                record.pages = Some(pages.clone());
            }
        }
        if let Some(lineage) = commit.info::<LineageSummary>(table, crate::transform::LINEAGE_KEY)? {
            record.run_id = lineage.run_id;
            record.rows = lineage.rows;
            record.upstream = lineage.upstream;
        }
        // A report from another version of inlet that does not read is shown as absent.
        record.quality = commit.info_value(QUALITY_KEY).and_then(|q| serde_json::from_value(q.clone()).ok());
        Ok(record)
    }

    /// A version nothing is known of (its commit expired and no run recorded it).
    fn unknown(version: i64, from: &str) -> VersionRecord {
        VersionRecord {
            version,
            timestamp_ms: None,
            operation: None,
            run_id: None,
            rows: None,
            upstream: BTreeMap::new(),
            files: Vec::new(),
            pages: None,
            quality: None,
            user_metadata: None,
            files_added: 0,
            files_removed: 0,
            schema_changed: false,
            from: from.to_owned(),
        }
    }
}

/// What the history shows of a derived table's lineage.
#[derive(Deserialize)]
struct LineageSummary {
    run_id: Option<String>,
    rows: Option<serde_json::Value>,
    #[serde(default)]
    upstream: BTreeMap<String, i64>,
}

/// The record of `version` of `table` from its commit, `None` when the commit expired.
async fn from_log(table: &Table, version: i64) -> Result<Option<VersionRecord>> {
    match crate::log::read(table, version).await? {
        Some(commit) => VersionRecord::from_log(&table.name, &commit).map(Some),
        None => Ok(None),
    }
}

/// The versions of `table`, newest first, at most `limit`: from the log, and from the run
/// history for versions whose commit files are gone.
pub async fn history(lake: &Url, table: &Table, limit: usize) -> Result<Vec<VersionRecord>> {
    history_page(lake, table, None, limit).await
}

/// A page of [`history`]: at most `limit` versions older than `before` (the latest when
/// `None`), newest first. Only the page's commit files are read.
pub async fn history_page(lake: &Url, table: &Table, before: Option<i64>, limit: usize) -> Result<Vec<VersionRecord>> {
    let Some(latest) = table.version() else {
        return Ok(Vec::new());
    };
    let newest = before.map_or(latest, |b| b.saturating_sub(1).min(latest));
    if newest < 0 || limit == 0 {
        return Ok(Vec::new());
    }
    let mut records = Vec::new();
    let mut missing = Vec::new();
    let oldest = (newest + 1 - i64::try_from(limit).unwrap_or(i64::MAX)).max(0);
    for (version, commit) in crate::log::read_range(table, oldest..=newest).await?.into_iter().rev() {
        match commit {
            Some(commit) => records.push(VersionRecord::from_log(&table.name, &commit)?),
            None => missing.push(version),
        }
    }
    if !missing.is_empty() {
        let mirrored = mirrored_records(lake, &table.name, oldest).await?;
        for version in missing {
            match mirrored.get(&version) {
                Some(record) => records.push(record.clone()),
                None => records.push(VersionRecord::unknown(version, "checkpoint (no record)")),
            }
        }
        records.sort_by_key(|r| std::cmp::Reverse(r.version));
    }
    Ok(records)
}

/// One version of `table`, from the log or else the run history.
pub async fn version(lake: &Url, table: &Table, version: i64) -> Result<Option<VersionRecord>> {
    if table.version().is_none_or(|latest| version > latest || version < 0) {
        return Ok(None);
    }
    if let Some(record) = from_log(table, version).await? {
        return Ok(Some(record));
    }
    Ok(mirrored_records(lake, &table.name, version).await?.remove(&version))
}

async fn open_runs(lake: &Url) -> Result<Table> {
    let url =
        lake.join(RUNS_PATH).map_err(|e| EngineError::Internal(format!("joining `{lake}` and `{RUNS_PATH}`: {e}")))?;
    Table::open(RUNS_TABLE, url).await
}

/// The run history's columns.
pub fn runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("pipeline", DataType::Utf8, false),
        // `source` or `table` (a run), `replay`, `restore`, `backfill`, `properties`, or
        // `optimize` / `vacuum` (of one table, or a scheduled pass over all, named
        // `[pipeline.maintenance]`).
        Field::new("kind", DataType::Utf8, false),
        // The source's name, or the derived table's.
        Field::new("name", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        // committed | up_to_date | failed | skipped
        Field::new("status", DataType::Utf8, false),
        Field::new("started_at", timestamp_type(), false),
        Field::new("ended_at", timestamp_type(), false),
        Field::new("table_version", DataType::Int64, true),
        Field::new("rows_in", DataType::Int64, true),
        Field::new("rows_out", DataType::Int64, true),
        Field::new("quarantined", DataType::Int64, true),
        Field::new("error", DataType::Utf8, true),
        // The gate's report when no commit carries it (a failed gate), JSON.
        Field::new("quality", DataType::Utf8, true),
        // The records of the versions committed, JSON (see `VersionRecord`).
        Field::new("commits", DataType::Utf8, true),
        // The day a `backfill` row replaced (`YYYY-MM-DD`).
        Field::new("window", DataType::Utf8, true),
    ]))
}

/// One row of the run history.
struct RunRow {
    kind: &'static str,
    name: String,
    table: String,
    status: String,
    started_micros: i64,
    ended_micros: i64,
    table_version: Option<i64>,
    rows_in: Option<i64>,
    rows_out: Option<i64>,
    quarantined: Option<i64>,
    error: Option<String>,
    quality: Option<String>,
    commits: Vec<VersionRecord>,
    window: Option<String>,
}

/// Appends a run's rows to the run history: one per source and derived table it ran, with
/// the records of the versions each committed, read back from their commits.
pub async fn record_run(lake: &Url, report: &RunReport, record_idle: bool) -> Result<()> {
    let mut rows = Vec::new();
    for source in report.sources.iter().filter(|s| record_idle || !s.is_idle()) {
        let table = table_at(lake, &source.table).await?;
        let mut commits = Vec::new();
        for commit in &source.commits {
            commits.extend(from_log(&table, commit.table_version).await?);
        }
        let status = if source.error.is_some() {
            "failed"
        } else if source.commits.is_empty() {
            "up_to_date"
        } else {
            "committed"
        };
        rows.push(RunRow {
            kind: "source",
            name: source.source.clone(),
            table: source.table.clone(),
            status: status.to_owned(),
            started_micros: source.started_micros,
            ended_micros: source.ended_micros(),
            table_version: source.table_version,
            rows_in: Some((source.rows + source.quarantined) as i64),
            rows_out: Some(source.rows as i64),
            quarantined: Some(source.quarantined as i64),
            error: source.error.as_ref().map(|e| e.message.clone()),
            quality: source.failed_gate.as_ref().and_then(|q| serde_json::to_string(q).ok()),
            commits,
            window: None,
        });
    }
    for derived in report.tables.iter().filter(|t| record_idle || t.status != crate::transform::TableStatus::UpToDate) {
        rows.push(table_row(lake, "table", derived, None).await?);
    }
    append_rows(lake, &report.load_id, &report.pipeline, rows).await
}

/// A derived table's row: what it read and wrote, and the record of the version it committed.
async fn table_row(
    lake: &Url,
    kind: &'static str,
    derived: &crate::transform::TableReport,
    window: Option<&str>,
) -> Result<RunRow> {
    let mut commits = Vec::new();
    if derived.status == crate::transform::TableStatus::Committed
        && let Some(version) = derived.table_version
    {
        let table = table_at(lake, &derived.table).await?;
        commits.extend(from_log(&table, version).await?);
    }
    let counts = &derived.rows;
    let rows_in = counts.inserted + counts.updated + counts.unchanged + counts.deleted;
    Ok(RunRow {
        kind,
        name: derived.table.clone(),
        table: derived.table.clone(),
        status: serde_json::to_value(derived.status)
            .ok()
            .and_then(|s| s.as_str().map(str::to_owned))
            .unwrap_or_default(),
        started_micros: derived.started_micros,
        ended_micros: derived.ended_micros(),
        table_version: derived.table_version,
        rows_in: Some(rows_in as i64),
        rows_out: Some((counts.inserted + counts.updated + counts.deleted) as i64),
        quarantined: Some(derived.quarantined as i64),
        error: derived.error.as_ref().map(|e| e.message.clone()),
        quality: derived.quality.as_ref().filter(|_| commits.is_empty()).and_then(|q| serde_json::to_string(q).ok()),
        commits,
        window: window.map(str::to_owned),
    })
}

/// Appends one `backfill` row for a window of `table`.
pub async fn record_window(
    lake: &Url,
    run_id: &str,
    pipeline: &str,
    window: &str,
    report: &crate::transform::TableReport,
) -> Result<()> {
    let row = table_row(lake, "backfill", report, Some(window)).await?;
    append_rows(lake, run_id, pipeline, vec![row]).await
}

/// A column of a run-history batch as text; `None` when the batch has no such column (it
/// was written before the column was added).
pub(crate) fn text_column(batch: &RecordBatch, name: &str) -> Option<StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| arrow::compute::cast(c, &DataType::Utf8).ok())
        .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
}

/// The windows of `table` that a backfill completed (committed, or found up to date).
pub async fn windows_done(lake: &Url, table: &str) -> Result<std::collections::BTreeSet<String>> {
    let mut done = std::collections::BTreeSet::new();
    let runs = open_runs(lake).await?;
    for batch in runs.read_all().await? {
        let text = |name: &str| text_column(&batch, name);
        let (Some(kinds), Some(names), Some(statuses), Some(windows)) =
            (text("kind"), text("name"), text("status"), text("window"))
        else {
            continue;
        };
        for row in 0..batch.num_rows() {
            if kinds.value(row) == "backfill"
                && names.value(row) == table
                && matches!(statuses.value(row), "committed" | "up_to_date")
                && windows.is_valid(row)
            {
                done.insert(windows.value(row).to_owned());
            }
        }
    }
    Ok(done)
}

/// The `name` of the run-history row a scheduled maintenance pass of every table writes.
pub const SCHEDULED_PASS: &str = "[pipeline.maintenance]";

/// Appends the row of one scheduled maintenance pass (`kind` is `optimize` or `vacuum`) over
/// every table: `committed` when it committed to one at least, else `up_to_date`, `failed`
/// when a table's failed. `inlet serve` starts the schedule from the latest one.
pub async fn record_pass(
    lake: &Url,
    pipeline: &str,
    kind: &'static str,
    status: &str,
    started_micros: i64,
    error: Option<String>,
) -> Result<()> {
    let row = RunRow {
        kind,
        name: SCHEDULED_PASS.to_owned(),
        table: String::new(),
        status: status.to_owned(),
        started_micros,
        ended_micros: chrono::Utc::now().timestamp_micros(),
        table_version: None,
        rows_in: None,
        rows_out: None,
        quarantined: None,
        error,
        quality: None,
        commits: Vec::new(),
        window: None,
    };
    append_rows(lake, &uuid::Uuid::now_v7().to_string(), pipeline, vec![row]).await
}

/// Appends one row for an operation outside `inlet run` (`replay`, `restore`, maintenance)
/// that committed `versions` of `table`, so its record survives log cleanup too.
pub async fn record_operation(
    lake: &Url,
    pipeline: &str,
    kind: &'static str,
    table: &str,
    versions: std::ops::RangeInclusive<i64>,
    started_micros: i64,
) -> Result<()> {
    let opened = crate::query::open(lake, table).await?;
    let version = *versions.end();
    let mut commits = Vec::new();
    for (_, commit) in crate::log::read_range(&opened, versions).await? {
        if let Some(commit) = commit {
            commits.push(VersionRecord::from_log(table, &commit)?);
        }
    }
    let row = RunRow {
        kind,
        name: table.to_owned(),
        table: table.to_owned(),
        status: "committed".to_owned(),
        started_micros,
        ended_micros: chrono::Utc::now().timestamp_micros(),
        table_version: Some(version),
        rows_in: None,
        rows_out: None,
        quarantined: None,
        error: None,
        quality: None,
        commits,
        window: None,
    };
    append_rows(lake, &uuid::Uuid::now_v7().to_string(), pipeline, vec![row]).await
}

async fn append_rows(lake: &Url, run_id: &str, pipeline: &str, rows: Vec<RunRow>) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len();
    let times = |f: &dyn Fn(&RunRow) -> i64| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(f)).with_timezone("UTC"))
    };
    let commits: Vec<Option<String>> = rows
        .iter()
        .map(|r| (!r.commits.is_empty()).then(|| serde_json::to_string(&r.commits).unwrap_or_default()))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(crate::conform::repeated(run_id, n)),
        Arc::new(crate::conform::repeated(pipeline, n)),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.kind))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.name.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.table.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.status.as_str()))),
        times(&|r| r.started_micros),
        times(&|r| r.ended_micros),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.table_version))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.rows_in))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.rows_out))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.quarantined))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.error.as_deref()))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.quality.as_deref()))),
        Arc::new(StringArray::from_iter(commits.iter().map(Option::as_deref))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.window.as_deref()))),
    ];
    let batch = RecordBatch::try_new(runs_schema(), columns).map_err(|e| EngineError::arrow("run history rows", e))?;
    // Another process may append at the same moment: try once more on a lost race.
    match append_batch(lake, run_id, n, &batch).await {
        Err(err) if err.is_conflict() => append_batch(lake, run_id, n, &batch).await,
        other => other,
    }
}

async fn append_batch(lake: &Url, run_id: &str, n: usize, batch: &RecordBatch) -> Result<()> {
    let mut runs = open_runs(lake).await?;
    let mut writer = runs.writer_factory(&[]).writer(runs_schema());
    writer.write(batch).await?;
    let adds = writer.close().await?;
    let schema = runs_schema_change(runs.arrow_schema()?);
    let metadata = HashMap::from([(
        "userMetadata".to_owned(),
        serde_json::Value::String(format!("inlet run {run_id} ({n} rows)")),
    )]);
    runs.commit(Commit::append(adds, schema, "inlet.runs", chrono::Utc::now().timestamp_micros(), metadata)).await?;
    Ok(())
}

/// The run history's schema to commit: all of it for a new table; for a history from
/// before a column was added, its columns plus the missing ones; else none (a history with
/// more columns, from a newer inlet, keeps them).
fn runs_schema_change(existing: Option<SchemaRef>) -> Option<SchemaRef> {
    let Some(existing) = existing else {
        return Some(runs_schema());
    };
    let wanted = runs_schema();
    let missing: Vec<_> =
        wanted.fields().iter().filter(|f| existing.field_with_name(f.name()).is_err()).cloned().collect();
    if missing.is_empty() {
        return None;
    }
    let fields: Vec<_> = existing.fields().iter().cloned().chain(missing).collect();
    Some(Arc::new(Schema::new(fields)))
}

async fn table_at(lake: &Url, name: &str) -> Result<Table> {
    let parsed = crate::config::TableName::parse(name)
        .ok_or_else(|| EngineError::Internal(format!("`{name}` is not `<layer>.<name>`")))?;
    Table::open(name, crate::table::table_url(lake, &parsed)?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_run_history_gains_the_new_columns_only() {
        assert_eq!(runs_schema_change(None), Some(runs_schema()));
        assert_eq!(runs_schema_change(Some(runs_schema())), None);
        let old: Vec<_> = runs_schema().fields().iter().filter(|f| f.name() != "window").cloned().collect();
        let upgraded = runs_schema_change(Some(Arc::new(Schema::new(old)))).unwrap();
        assert_eq!(upgraded.fields().len(), runs_schema().fields().len());
        let mut newer: Vec<_> = runs_schema().fields().iter().cloned().collect();
        newer.push(Arc::new(Field::new("from_the_future", DataType::Utf8, true)));
        assert_eq!(runs_schema_change(Some(Arc::new(Schema::new(newer)))), None);
    }

    #[test]
    fn a_commit_tells_its_story() {
        let commit = br#"{"commitInfo":{"timestamp":1700000000000,"operation":"MERGE","userMetadata":"inlet merge","inlet_transform":{"run_id":"r1","upstream":{"bronze.orders":4},"rows":{"inserted":1}},"inlet_quality":{"outcome":"passed","expectations":[]}}}
{"add":{"path":"a.parquet"}}
{"remove":{"path":"b.parquet"}}
{"add":{"path":"c.parquet"}}
"#;
        let record =
            VersionRecord::from_log("silver.orders", &LogCommit::parse("silver.orders", 7, commit).unwrap()).unwrap();
        assert_eq!(record.version, 7);
        assert_eq!(record.operation.as_deref(), Some("MERGE"));
        assert_eq!(record.run_id.as_deref(), Some("r1"));
        assert_eq!(record.upstream.get("bronze.orders"), Some(&4));
        assert_eq!((record.files_added, record.files_removed), (2, 1));
        assert_eq!(record.quality.unwrap().outcome, inlet_quality::Outcome::Passed);
        assert_eq!(record.from, "log");
    }
}
