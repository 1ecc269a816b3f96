//! `inlet backfill`: recompute a `replace_partitions` table one window (a day of its date
//! partition column) at a time.
//!
//! Each window is its own commit, replacing exactly that day's partitions with the query's
//! rows for that day (none: the day is emptied), so re-running a window is idempotent and a
//! failed window leaves the others in place. Every window gets a `backfill` row in the run
//! history; `--missing` runs only the windows of the range with no successful row there.

use chrono::NaiveDate;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::WriteMode;
use crate::error::{EngineError, Result};
use crate::run::Pipeline;
use crate::transform::{TableReport, TableStatus};

/// The most windows one backfill takes (about 27 years of days).
pub const MAX_WINDOWS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// First and last day, inclusive.
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Only windows without a successful backfill in the run history.
    pub missing: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackfillReport {
    pub table: String,
    pub run_id: String,
    /// Windows run, in order, with what each did.
    pub windows: Vec<WindowReport>,
    /// Windows left alone because a backfill already completed them (`--missing`).
    pub already_done: Vec<String>,
}

impl BackfillReport {
    pub fn failed(&self) -> usize {
        self.windows.iter().filter(|w| w.report.status == TableStatus::Failed).count()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    pub window: String,
    pub report: TableReport,
}

/// The days from `from` to `to`, inclusive.
pub fn windows(from: NaiveDate, to: NaiveDate) -> std::result::Result<Vec<String>, String> {
    if from > to {
        return Err(format!("--from {from} is after --to {to}"));
    }
    let days = (to - from).num_days() as usize + 1;
    if days > MAX_WINDOWS {
        return Err(format!("{days} windows from {from} to {to}; at most {MAX_WINDOWS} at once"));
    }
    Ok(from.iter_days().take(days).map(|d| d.format("%Y-%m-%d").to_string()).collect())
}

/// Runs the windows of `table` one after another; a window that fails is reported and the
/// next one runs.
pub async fn backfill(pipeline: &Pipeline, table: &str, options: &BackfillOptions) -> Result<BackfillReport> {
    let user_error = |message: String| EngineError::Config { path: pipeline.base_dir.join("inlet.toml"), message };
    let config = pipeline.config.tables.get(table).ok_or_else(|| user_error(format!("no derived table `{table}`")))?;
    if config.write != WriteMode::ReplacePartitions {
        return Err(user_error(format!(
            "`{table}` is written with `{}`; backfill re-runs `replace_partitions` tables window by window",
            config.write.as_str()
        )));
    }
    let mut wanted = windows(options.from, options.to).map_err(user_error)?;
    let mut already_done = Vec::new();
    if options.missing {
        let done = crate::audit::windows_done(&pipeline.lake, table).await?;
        let (skip, run): (Vec<String>, Vec<String>) = wanted.into_iter().partition(|w| done.contains(w));
        already_done = skip;
        wanted = run;
    }
    let run_id = uuid::Uuid::now_v7().to_string();
    let mut reports = Vec::new();
    for window in wanted {
        let began = std::time::Instant::now();
        let started_micros = chrono::Utc::now().timestamp_micros();
        let report =
            match crate::transform::run_table_window(pipeline, &pipeline.dag, table, &run_id, Some(&window)).await {
                Ok(report) => report,
                Err(err) => {
                    warn!(table, window = %window, error = %err, "backfill window failed");
                    let mut report = TableReport::new(table, config.write);
                    report.status = TableStatus::Failed;
                    report.started_micros = started_micros;
                    report.seconds = began.elapsed().as_secs_f64();
                    report.error = Some(crate::run::ReportedError::from(&err));
                    if let EngineError::GateFailed { report: quality, .. } = &err {
                        report.quality = Some(quality.as_ref().clone());
                    }
                    report
                }
            };
        info!(table, window = %window, status = ?report.status, version = ?report.table_version, "backfill window done");
        if let Err(err) =
            crate::audit::record_window(&pipeline.lake, &run_id, &pipeline.config.pipeline.name, &window, &report).await
        {
            warn!(table, window = %window, error = %err, "run history not written");
        }
        reports.push(WindowReport { window, report });
    }
    Ok(BackfillReport { table: table.to_owned(), run_id, windows: reports, already_done })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_the_days_of_the_range() {
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(
            windows(day("2024-02-27"), day("2024-03-01")).unwrap(),
            ["2024-02-27", "2024-02-28", "2024-02-29", "2024-03-01"]
        );
        assert_eq!(windows(day("2024-01-01"), day("2024-01-01")).unwrap(), ["2024-01-01"]);
        assert!(windows(day("2024-01-02"), day("2024-01-01")).unwrap_err().contains("after"));
        assert!(windows(day("1990-01-01"), day("2030-01-01")).unwrap_err().contains("at most"));
    }
}
