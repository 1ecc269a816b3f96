//! Reading the run history: pages of runs, each source's and table's latest runs, the
//! version records it mirrors. Every read is a DataFusion query over `_inlet.runs` that
//! projects the columns it needs, filters, and sorts with a limit (a top-k): a history of
//! 100,000 runs is never held whole.

use std::collections::HashMap;

use arrow::array::{Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use serde::Serialize;
use url::Url;

use super::{RUNS_TABLE, VersionRecord};
use crate::error::{EngineError, Result};

/// One row of the run history, as the runs page and `inlet runs` show it (the version
/// records it carries are left out: `inlet history` shows those).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub pipeline: String,
    pub kind: String,
    pub name: String,
    pub table: String,
    pub status: String,
    pub started_micros: i64,
    pub ended_micros: i64,
    pub table_version: Option<i64>,
    pub rows_in: Option<i64>,
    pub rows_out: Option<i64>,
    pub quarantined: Option<i64>,
    pub error: Option<String>,
}

/// Which runs, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// `committed`, `up_to_date`, `failed` or `skipped`.
    pub status: Option<String>,
    /// A source's or table's name (matched against both the name and the table).
    pub name: Option<String>,
    /// `source`, `table`, `replay`, `restore`, `backfill`, `optimize`, `vacuum`, ...
    pub kind: Option<String>,
    /// Ended at or after / before, microseconds since the epoch.
    pub since_micros: Option<i64>,
    pub until_micros: Option<i64>,
}

/// A page of the run history: at most `limit` runs after skipping `offset`, newest first,
/// and whether more follow.
pub async fn runs(lake: &Url, filter: &RunFilter, limit: usize, offset: usize) -> Result<(Vec<RunRecord>, bool)> {
    let mut conditions = Vec::new();
    if let Some(status) = &filter.status {
        conditions.push(format!("status = {}", literal(status)));
    }
    if let Some(kind) = &filter.kind {
        conditions.push(format!("kind = {}", literal(kind)));
    }
    if let Some(name) = &filter.name {
        conditions.push(format!("(name = {0} OR table_name = {0})", literal(name)));
    }
    if let Some(since) = filter.since_micros {
        conditions.push(format!("ended_at >= {}", timestamp(since)));
    }
    if let Some(until) = filter.until_micros {
        conditions.push(format!("ended_at < {}", timestamp(until)));
    }
    let sql = format!(
        "SELECT run_id, pipeline, kind, name, table_name, status, started_at, ended_at, table_version, rows_in, \
         rows_out, quarantined, error FROM {RUNS_TABLE} {} ORDER BY ended_at DESC, run_id, name LIMIT {} OFFSET {offset}",
        where_clause(&conditions),
        limit.saturating_add(1),
    );
    let mut out = Vec::new();
    for batch in query(lake, &sql).await? {
        let text = |name: &str| super::text_column(&batch, name);
        let (Some(run_ids), Some(pipelines), Some(kinds), Some(names), Some(tables), Some(statuses), Some(errors)) = (
            text("run_id"),
            text("pipeline"),
            text("kind"),
            text("name"),
            text("table_name"),
            text("status"),
            text("error"),
        ) else {
            continue;
        };
        let (Some(started), Some(ended)) = (micros(&batch, "started_at"), micros(&batch, "ended_at")) else {
            continue;
        };
        let number = |name: &str| int_column(&batch, name);
        let (versions, rows_in, rows_out, quarantined) =
            (number("table_version"), number("rows_in"), number("rows_out"), number("quarantined"));
        for row in 0..batch.num_rows() {
            let get = |column: &Option<Int64Array>| column.as_ref().and_then(|c| c.is_valid(row).then(|| c.value(row)));
            out.push(RunRecord {
                run_id: run_ids.value(row).to_owned(),
                pipeline: pipelines.value(row).to_owned(),
                kind: kinds.value(row).to_owned(),
                name: names.value(row).to_owned(),
                table: tables.value(row).to_owned(),
                status: statuses.value(row).to_owned(),
                started_micros: started.value(row),
                ended_micros: ended.value(row),
                table_version: get(&versions),
                rows_in: get(&rows_in),
                rows_out: get(&rows_out),
                quarantined: get(&quarantined),
                error: errors.is_valid(row).then(|| errors.value(row).to_owned()),
            });
        }
    }
    let more = out.len() > limit;
    out.truncate(limit);
    Ok((out, more))
}

/// The latest runs of one source, table or scheduled pass.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// The last run that succeeded (committed or found nothing to do), microseconds.
    pub last_success: Option<i64>,
    pub last_failure: Option<i64>,
    pub last_error: Option<String>,
    /// The latest run, whatever its outcome.
    pub last_run: Option<i64>,
    pub last_status: Option<String>,
    pub last_rows: Option<i64>,
    pub last_quarantined: Option<i64>,
    /// The expectations' outcome of the latest run (`passed`, `warned`, `failed`, ...), when
    /// it had any.
    pub last_quality: Option<String>,
}

/// Each `(kind, name)`'s latest runs; scheduled passes only of `pipeline`.
pub async fn summaries(lake: &Url, pipeline: &str) -> Result<HashMap<(String, String), RunSummary>> {
    let success = "status IN ('committed', 'up_to_date')";
    let sql = format!(
        "SELECT kind, name, \
           max(CASE WHEN {success} THEN ended_at END) AS last_success, \
           max(CASE WHEN status = 'failed' THEN ended_at END) AS last_failure, \
           first_value(error ORDER BY CASE WHEN status = 'failed' THEN 0 ELSE 1 END, ended_at DESC) AS last_error, \
           max(ended_at) AS last_run, \
           first_value(status ORDER BY ended_at DESC) AS last_status, \
           first_value(rows_out ORDER BY ended_at DESC) AS last_rows, \
           first_value(quarantined ORDER BY ended_at DESC) AS last_quarantined \
         FROM {RUNS_TABLE} \
         WHERE kind IN ('source', 'table') OR (kind IN ('optimize', 'vacuum') AND pipeline = {}) \
         GROUP BY kind, name",
        literal(pipeline)
    );
    let mut out = HashMap::new();
    for batch in query(lake, &sql).await? {
        let text = |name: &str| super::text_column(&batch, name);
        let (Some(kinds), Some(names), Some(errors), Some(statuses)) =
            (text("kind"), text("name"), text("last_error"), text("last_status"))
        else {
            continue;
        };
        let (success, failure, last) =
            (micros(&batch, "last_success"), micros(&batch, "last_failure"), micros(&batch, "last_run"));
        let (rows, quarantined) = (int_column(&batch, "last_rows"), int_column(&batch, "last_quarantined"));
        for row in 0..batch.num_rows() {
            let time =
                |c: &Option<TimestampMicrosecondArray>| c.as_ref().and_then(|c| c.is_valid(row).then(|| c.value(row)));
            let number = |c: &Option<Int64Array>| c.as_ref().and_then(|c| c.is_valid(row).then(|| c.value(row)));
            let failure = time(&failure);
            out.insert(
                (kinds.value(row).to_owned(), names.value(row).to_owned()),
                RunSummary {
                    last_success: time(&success),
                    last_failure: failure,
                    last_error: (failure.is_some() && errors.is_valid(row)).then(|| errors.value(row).to_owned()),
                    last_run: time(&last),
                    last_status: statuses.is_valid(row).then(|| statuses.value(row).to_owned()),
                    last_rows: number(&rows),
                    last_quarantined: number(&quarantined),
                    last_quality: None,
                },
            );
        }
    }
    // The expectations' outcome of each latest run: from its row alone (the version records
    // of every other run are not read).
    let latest: Vec<String> = out
        .iter()
        .filter(|((kind, _), _)| kind == "source" || kind == "table")
        .filter_map(|((kind, name), s)| {
            s.last_run.map(|at| {
                format!("(kind = {} AND name = {} AND ended_at = {})", literal(kind), literal(name), timestamp(at))
            })
        })
        .collect();
    if latest.is_empty() {
        return Ok(out);
    }
    let sql = format!("SELECT kind, name, quality, commits FROM {RUNS_TABLE} WHERE {}", latest.join(" OR "));
    for batch in query(lake, &sql).await? {
        let text = |name: &str| super::text_column(&batch, name);
        let (Some(kinds), Some(names), Some(quality), Some(commits)) =
            (text("kind"), text("name"), text("quality"), text("commits"))
        else {
            continue;
        };
        for row in 0..batch.num_rows() {
            let outcome = quality_outcome(
                quality.is_valid(row).then(|| quality.value(row)),
                commits.is_valid(row).then(|| commits.value(row)),
            );
            if let Some(summary) = out.get_mut(&(kinds.value(row).to_owned(), names.value(row).to_owned())) {
                summary.last_quality = outcome;
            }
        }
    }
    Ok(out)
}

/// The worst expectation outcome of a run row: its failed gate's, else its commits'.
fn quality_outcome(quality: Option<&str>, commits: Option<&str>) -> Option<String> {
    let worst = match quality.and_then(|q| serde_json::from_str::<inlet_quality::GateReport>(q).ok()) {
        Some(report) => Some(report.outcome),
        None => {
            let records: Vec<VersionRecord> = commits.and_then(|c| serde_json::from_str(c).ok()).unwrap_or_default();
            records.iter().filter_map(|r| r.quality.as_ref()).map(|q| q.outcome).max()
        }
    };
    // Its name as the commits record it.
    worst.and_then(|o| serde_json::to_value(o).ok()).and_then(|v| v.as_str().map(str::to_owned))
}

/// The version records of `table` from version `from` on that the run history mirrors, by
/// version (only the rows of runs that left the table at `from` or later are read).
pub async fn mirrored_records(lake: &Url, table: &str, from: i64) -> Result<HashMap<i64, VersionRecord>> {
    let sql = format!(
        "SELECT commits FROM {RUNS_TABLE} WHERE table_name = {} AND commits IS NOT NULL AND table_version >= {from} \
         ORDER BY ended_at",
        literal(table)
    );
    let mut records = HashMap::new();
    for batch in query(lake, &sql).await? {
        let Some(commits) = super::text_column(&batch, "commits") else { continue };
        for row in 0..batch.num_rows() {
            let Ok(list) = serde_json::from_str::<Vec<VersionRecord>>(commits.value(row)) else { continue };
            for mut record in list.into_iter().filter(|r| r.version >= from) {
                record.from = "run history".to_owned();
                records.insert(record.version, record);
            }
        }
    }
    Ok(records)
}

/// `sql` over the run history; nothing when there is none yet.
async fn query(lake: &Url, sql: &str) -> Result<Vec<RecordBatch>> {
    let runs = crate::query::open(lake, RUNS_TABLE).await?;
    if !runs.exists() {
        return Ok(Vec::new());
    }
    crate::query::run_on(&runs, RUNS_TABLE, sql).await.map(|(_, batches)| batches).map_err(|e| match e {
        EngineError::Sql { .. } => EngineError::Internal(format!("reading the run history: {e}")),
        other => other,
    })
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) }
}

/// A SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A SQL timestamp literal (UTC) of `micros`.
fn timestamp(micros: i64) -> String {
    format!("arrow_cast({micros}, 'Timestamp(Microsecond, Some(\"UTC\"))')")
}

fn micros(batch: &RecordBatch, name: &str) -> Option<TimestampMicrosecondArray> {
    let column = batch.column_by_name(name)?;
    let column = arrow::compute::cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None)).ok()?;
    column.as_any().downcast_ref::<TimestampMicrosecondArray>().cloned()
}

fn int_column(batch: &RecordBatch, name: &str) -> Option<Int64Array> {
    let column = batch.column_by_name(name)?;
    let column = arrow::compute::cast(column, &DataType::Int64).ok()?;
    column.as_any().downcast_ref::<Int64Array>().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted() {
        assert_eq!(literal("o'brien"), "'o''brien'");
        assert!(timestamp(5).contains("Microsecond"));
        assert_eq!(where_clause(&[]), "");
        assert_eq!(where_clause(&["a".into(), "b".into()]), "WHERE a AND b");
    }

    #[test]
    fn a_runs_quality_is_its_worst_outcome() {
        assert_eq!(quality_outcome(Some(r#"{"outcome":"failed","expectations":[]}"#), None).as_deref(), Some("failed"));
        let commits = r#"[{"version":1,"timestamp_ms":null,"operation":null,"run_id":null,"rows":null,"quality":{"outcome":"passed","expectations":[]},"user_metadata":null,"files_added":0,"files_removed":0},
                          {"version":2,"timestamp_ms":null,"operation":null,"run_id":null,"rows":null,"quality":{"outcome":"warned","expectations":[]},"user_metadata":null,"files_added":0,"files_removed":0}]"#;
        assert_eq!(quality_outcome(None, Some(commits)).as_deref(), Some("warned"));
        assert_eq!(quality_outcome(None, None), None);
    }
}
