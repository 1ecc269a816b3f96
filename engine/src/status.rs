//! `inlet status`: where each source and table stands, from the run history, the tables'
//! logs and the sources' listings. Read-only: it changes nothing anywhere, a notification
//! queue included ([`crate::source::FileSource::peek`]).

use std::collections::HashMap;

use serde::Serialize;

use crate::audit::RunSummary;
use crate::error::Result;
use crate::ingest::ledger::{FileStatus, Ledger};
use crate::log::TxnCommit;
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
    /// The table's latest version, and when its writer (the source, or the table's own
    /// run) last committed to it, in ms since the epoch: a compaction or a property change
    /// since does not make old data fresh.
    pub table_version: Option<i64>,
    pub last_commit_ms: Option<i64>,
    /// Seconds since that commit.
    pub freshness_secs: Option<i64>,
    /// The age its `freshness_sla_secs` is held against: of the newest committed data
    /// (sources), of the later of the last commit and the last successful run (tables).
    pub age_secs: Option<i64>,
    pub freshness_sla_secs: Option<u64>,
    /// Older than its SLA (also when it never committed nor ran successfully).
    pub stale: bool,
    /// The last run that succeeded (committed or found nothing to do), microseconds.
    pub last_success_micros: Option<i64>,
    /// The last run that failed, and why.
    pub last_failure_micros: Option<i64>,
    pub last_error: Option<String>,
    /// The latest run: when it ended, its status, the rows it wrote and quarantined.
    pub last_run_micros: Option<i64>,
    pub last_status: Option<String>,
    pub last_rows: Option<i64>,
    pub last_quarantined: Option<i64>,
    /// The latest run in one word: `ok`, `warned` (an expectation warned), `quarantined`
    /// (rows went to quarantine), `failed`, `skipped`, or `never` (no run on record).
    pub outcome: &'static str,
    /// Files listed but not ingested yet (sources).
    pub backlog_files: Option<usize>,
}

impl Status {
    /// A table also ran successfully at `micros` (a run the history does not keep: serve
    /// leaves out runs that found nothing new): its last success, age and staleness follow.
    pub fn saw_success(&mut self, micros: i64, now_ms: i64) {
        if self.last_success_micros.is_some_and(|t| t >= micros) {
            return;
        }
        self.last_success_micros = Some(micros);
        if self.kind == "table" {
            let fresh_at_ms = self.last_commit_ms.max(Some(micros / 1000));
            self.age_secs = fresh_at_ms.map(|t| (now_ms - t).max(0) / 1000);
            self.stale = Status::is_stale(self.freshness_sla_secs, self.age_secs);
        }
    }

    /// Whether `age_secs` is past the SLA (never fresh counts as past it).
    fn is_stale(sla: Option<u64>, age_secs: Option<i64>) -> bool {
        match (sla, age_secs) {
            (Some(sla), Some(age)) => age > i64::try_from(sla).unwrap_or(i64::MAX),
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// The latest run of a source or table in one word.
fn outcome(summary: Option<&RunSummary>) -> &'static str {
    let Some(summary) = summary else { return "never" };
    match (summary.last_status.as_deref(), summary.last_quality.as_deref()) {
        (None, _) => "never",
        (Some("failed"), _) | (_, Some("failed")) => "failed",
        (Some("skipped"), _) => "skipped",
        (_, Some("warned")) if summary.last_quarantined.unwrap_or(0) > 0 => "quarantined",
        (_, Some("warned")) => "warned",
        _ if summary.last_quarantined.unwrap_or(0) > 0 => "quarantined",
        _ => "ok",
    }
}

/// The status of every source and derived table of the pipeline.
pub async fn status(pipeline: &Pipeline, connectors: &dyn Connectors) -> Result<Vec<Status>> {
    status_of(pipeline, Some(connectors)).await
}

/// [`status`], with the sources' backlogs only when `connectors` are given (listing a
/// source costs a request per page of its prefix: a freshness check does without).
pub async fn status_of(pipeline: &Pipeline, connectors: Option<&dyn Connectors>) -> Result<Vec<Status>> {
    let runs = crate::audit::summaries(&pipeline.lake, &pipeline.config.pipeline.name).await?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut out = Vec::new();
    let mut entries: Vec<(&'static str, String, String, Option<u64>)> = pipeline
        .config
        .sources
        .iter()
        .map(|(name, source)| ("source", name.clone(), source.target().to_owned(), source.freshness_sla_secs()))
        .collect();
    entries.extend(
        pipeline
            .dag
            .order()
            .iter()
            .map(|t| ("table", t.clone(), t.clone(), pipeline.config.tables.get(t).and_then(|c| c.freshness_sla_secs))),
    );
    for (kind, name, table_name, sla) in entries {
        let table = crate::query::open(&pipeline.lake, &table_name).await?;
        let version = table.version();
        let writer = match kind {
            "source" => app_id(&name),
            _ => crate::transform::app_id(&name),
        };
        let last_commit_ms = match version {
            Some(v) => match crate::log::commit_of_txn(&table, &writer, None).await {
                Ok(TxnCommit::Found(commit)) => commit.timestamp_ms,
                // Written by something else, or its commit expired: the latest commit's time.
                Ok(_) => crate::log::read(&table, v).await?.and_then(|commit| commit.timestamp_ms),
                Err(err) => return Err(err),
            },
            None => None,
        };
        let backlog_files = match (kind, connectors) {
            ("source", Some(connectors)) => backlog(pipeline, connectors, &name, &table).await?,
            _ => None,
        };
        let history = runs.get(&(kind.to_owned(), name.clone()));
        let last_success = history.and_then(|h| h.last_success);
        let fresh_at_ms = match kind {
            "table" => last_commit_ms.max(last_success.map(|micros| micros / 1000)),
            _ => last_commit_ms,
        };
        let age_secs = fresh_at_ms.map(|t| (now_ms - t).max(0) / 1000);
        out.push(Status {
            kind,
            name: name.clone(),
            table: table_name,
            table_version: version,
            last_commit_ms,
            freshness_secs: last_commit_ms.map(|t| (now_ms - t) / 1000),
            age_secs,
            freshness_sla_secs: sla,
            stale: Status::is_stale(sla, age_secs),
            last_success_micros: last_success,
            last_failure_micros: history.and_then(|h| h.last_failure),
            last_error: history.and_then(|h| h.last_error.clone()),
            last_run_micros: history.and_then(|h| h.last_run),
            last_status: history.and_then(|h| h.last_status.clone()),
            last_rows: history.and_then(|h| h.last_rows),
            last_quarantined: history.and_then(|h| h.last_quarantined),
            outcome: outcome(history),
            backlog_files,
        });
    }
    Ok(out)
}

/// Each file source's backlog (as in [`Status::backlog_files`]), by source name.
pub async fn backlogs(pipeline: &Pipeline, connectors: &dyn Connectors) -> Result<HashMap<String, Option<usize>>> {
    let mut out = HashMap::new();
    for (name, source) in &pipeline.config.sources {
        let table = crate::query::open(&pipeline.lake, source.target()).await?;
        out.insert(name.clone(), backlog(pipeline, connectors, name, &table).await?);
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
    for ((kind, name), summary) in crate::audit::summaries(&pipeline.lake, &pipeline.config.pipeline.name).await? {
        let kind = match kind.as_str() {
            "optimize" => "optimize",
            "vacuum" => "vacuum",
            _ => continue,
        };
        if let (true, Some(at)) = (name == crate::audit::SCHEDULED_PASS, summary.last_success) {
            last.insert(kind, at);
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_in_one_word() {
        let run = |status: &str, quality: Option<&str>, quarantined: i64| RunSummary {
            last_status: Some(status.to_owned()),
            last_quality: quality.map(str::to_owned),
            last_quarantined: Some(quarantined),
            ..RunSummary::default()
        };
        assert_eq!(outcome(None), "never");
        assert_eq!(outcome(Some(&run("committed", None, 0))), "ok");
        assert_eq!(outcome(Some(&run("up_to_date", Some("passed"), 0))), "ok");
        assert_eq!(outcome(Some(&run("committed", Some("warned"), 0))), "warned");
        assert_eq!(outcome(Some(&run("committed", Some("warned"), 3))), "quarantined");
        assert_eq!(outcome(Some(&run("committed", None, 3))), "quarantined");
        assert_eq!(outcome(Some(&run("committed", Some("failed"), 0))), "failed");
        assert_eq!(outcome(Some(&run("failed", None, 0))), "failed");
        assert_eq!(outcome(Some(&run("skipped", None, 0))), "skipped");
    }

    #[test]
    fn a_table_that_ran_is_fresh_whether_or_not_the_history_kept_the_run() {
        let mut row = Status {
            kind: "table",
            name: "gold.t".into(),
            table: "gold.t".into(),
            table_version: Some(0),
            last_commit_ms: Some(0),
            freshness_secs: Some(100),
            age_secs: Some(100),
            freshness_sla_secs: Some(10),
            stale: true,
            last_success_micros: Some(0),
            last_failure_micros: None,
            last_error: None,
            last_run_micros: None,
            last_status: None,
            last_rows: None,
            last_quarantined: None,
            outcome: "ok",
            backlog_files: None,
        };
        row.saw_success(95_000_000, 100_000);
        assert_eq!((row.age_secs, row.stale), (Some(5), false));
        let mut source = Status { kind: "source", ..row.clone() };
        source.age_secs = Some(100);
        source.stale = true;
        source.saw_success(99_000_000, 100_000);
        assert!(source.stale, "a source is as fresh as its newest data");
    }

    #[test]
    fn stale_past_the_sla_or_never_fresh() {
        assert!(!Status::is_stale(None, None));
        assert!(Status::is_stale(Some(10), None));
        assert!(!Status::is_stale(Some(10), Some(10)));
        assert!(Status::is_stale(Some(10), Some(11)));
    }
}
