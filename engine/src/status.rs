//! `inlet status`: where each source and table stands, from the run history, the tables'
//! logs and the sources' listings. Read-only: it changes nothing anywhere, a notification
//! queue included ([`crate::source::FileSource::peek`]).

use std::collections::HashMap;

use arrow::array::{Array, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use serde::Serialize;

use crate::error::Result;
use crate::ingest::ledger::{FileStatus, Ledger};
use crate::run::{Connectors, Pipeline, app_id};
use crate::source::Source;
use crate::table::Table;

/// One source or derived table.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `source` or `table`.
    pub kind: &'static str,
    pub name: String,
    pub table: String,
    /// The table's latest version and when it was committed (ms since the epoch).
    pub table_version: Option<i64>,
    pub last_commit_ms: Option<i64>,
    /// Seconds since that commit.
    pub freshness_secs: Option<i64>,
    /// The last run that succeeded (committed or found nothing to do), microseconds.
    pub last_success_micros: Option<i64>,
    /// The last run that failed, and why.
    pub last_failure_micros: Option<i64>,
    pub last_error: Option<String>,
    /// Files listed but not ingested yet (sources).
    pub backlog_files: Option<usize>,
}

/// The status of every source and derived table of the pipeline.
pub async fn status(pipeline: &Pipeline, connectors: &dyn Connectors) -> Result<Vec<Status>> {
    let runs = runs_by_name(pipeline).await?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut out = Vec::new();
    let mut entries: Vec<(&'static str, String, String)> = pipeline
        .config
        .sources
        .iter()
        .map(|(name, source)| ("source", name.clone(), source.target().to_owned()))
        .collect();
    entries.extend(pipeline.dag.order().iter().map(|t| ("table", t.clone(), t.clone())));
    for (kind, name, table_name) in entries {
        let table = crate::query::open(&pipeline.lake, &table_name).await?;
        let version = table.version();
        let last_commit_ms = match version {
            Some(v) => crate::log::read(&table, v).await?.and_then(|commit| commit.timestamp_ms),
            None => None,
        };
        let backlog_files = match kind {
            "source" => backlog(pipeline, connectors, &name, &table).await?,
            _ => None,
        };
        let history = runs.get(&(kind, name.clone()));
        out.push(Status {
            kind,
            name: name.clone(),
            table: table_name,
            table_version: version,
            last_commit_ms,
            freshness_secs: last_commit_ms.map(|t| (now_ms - t) / 1000),
            last_success_micros: history.and_then(|h| h.last_success),
            last_failure_micros: history.and_then(|h| h.last_failure),
            last_error: history.and_then(|h| h.last_error.clone()),
            backlog_files,
        });
    }
    Ok(out)
}

/// Files a file source holds that its ledger does not: `None` for extractors (how much an
/// API holds is not known without reading it) and for sources that cannot be listed now.
async fn backlog(pipeline: &Pipeline, connectors: &dyn Connectors, name: &str, table: &Table) -> Result<Option<usize>> {
    if pipeline.source_config(name)?.files().is_none() {
        return Ok(None);
    }
    let Source::Files { files, .. } = connectors.source(name, pipeline)? else {
        return Ok(None);
    };
    let Ok(held) = files.peek().await else {
        return Ok(None);
    };
    let ledger = Ledger::load(table, &app_id(name)).await?;
    Ok(Some(held.iter().filter(|f| matches!(ledger.status(f), FileStatus::New)).count()))
}

/// When each scheduled maintenance pass (`optimize`, `vacuum` of every table) last ran to
/// the end, in microseconds, from the run history (`inlet serve` starts its schedules from
/// these; a manual `inlet optimize` or an auto-compaction is not a pass).
pub async fn last_maintenance(pipeline: &Pipeline) -> Result<HashMap<&'static str, i64>> {
    let mut last = HashMap::new();
    for ((kind, name), summary) in runs_by_name(pipeline).await? {
        if let ("optimize" | "vacuum", true, Some(at)) =
            (kind, name == crate::audit::SCHEDULED_PASS, summary.last_success)
        {
            last.insert(kind, at);
        }
    }
    Ok(last)
}

#[derive(Default)]
struct RunSummary {
    last_success: Option<i64>,
    last_failure: Option<i64>,
    last_error: Option<String>,
}

/// The latest success and failure of each source and table in the run history.
async fn runs_by_name(pipeline: &Pipeline) -> Result<HashMap<(&'static str, String), RunSummary>> {
    let mut out: HashMap<(&'static str, String), RunSummary> = HashMap::new();
    let runs = crate::query::open(&pipeline.lake, crate::audit::RUNS_TABLE).await?;
    for batch in runs.read_all().await? {
        let text = |name: &str| crate::audit::text_column(&batch, name);
        let ended = batch
            .column_by_name("ended_at")
            .and_then(|c| arrow::compute::cast(c, &DataType::Timestamp(TimeUnit::Microsecond, None)).ok())
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>().cloned());
        let (Some(kinds), Some(names), Some(statuses), Some(errors), Some(ended)) =
            (text("kind"), text("name"), text("status"), text("error"), ended)
        else {
            continue;
        };
        let pipelines = text("pipeline");
        let pipeline_name = pipeline.config.pipeline.name.as_str();
        for row in 0..batch.num_rows() {
            let kind = match kinds.value(row) {
                "source" => "source",
                "table" => "table",
                // Scheduled passes are the pipeline's own: another pipeline on the lake has its own.
                "optimize" | "vacuum" if pipelines.as_ref().is_some_and(|p| p.value(row) != pipeline_name) => continue,
                "optimize" => "optimize",
                "vacuum" => "vacuum",
                _ => continue,
            };
            let summary = out.entry((kind, names.value(row).to_owned())).or_default();
            let at = ended.value(row);
            match statuses.value(row) {
                "failed" if summary.last_failure.is_none_or(|t| at > t) => {
                    summary.last_failure = Some(at);
                    summary.last_error = errors.is_valid(row).then(|| errors.value(row).to_owned());
                }
                "committed" | "up_to_date" => summary.last_success = summary.last_success.max(Some(at)),
                _ => {}
            }
        }
    }
    Ok(out)
}
