//! Derived tables: a table's SQL over its upstream tables, written with its strategy.
//!
//! One run of one table:
//! 1. open the upstream tables and note their versions; when they and the SQL are what the
//!    table last read (its lineage), the table is up to date and nothing is written;
//! 2. register each upstream in a DataFusion session as `<layer>.<name>`: all of it, or with
//!    `incremental`, only the files appended since the version last read;
//! 3. run the query and write the result by `write`, in one commit carrying the table's
//!    `txn` (app id `inlet.table.<layer>.<name>`, one version per committing run) and the
//!    lineage (SQL, upstream versions, row counts) in `commitInfo`.
//!
//! Merge and SCD2 work out first what changes (a join of the result against the table,
//! pruned to the files holding the result's keys) and rewrite only the files holding
//! changed keys. A run that dies before its commit leaves the previous version untouched.

mod lineage;
mod mark;
mod merge;
mod report;
pub mod scd2;
mod unchanged;
mod upstream;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::prelude::SessionContext;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

pub use lineage::{LINEAGE_KEY, Lineage, appenders_reads, lagging_appender};
pub use report::{RowCounts, TableReport, TableStatus, Window};
pub use write::window_column;
pub(crate) use write::{Planned, Writer, Written, change_schema, conform_batch, removes_for};

use crate::config::{TableConfig, TableName};
use crate::dag::{Dag, NodeKind};
use crate::error::{EngineError, Result};
use crate::run::Pipeline;
use crate::table::{Commit, CommitKind, Table, table_url};
use lineage::{commit_quarantine, config_fingerprint, finish_quarantine, hex, last_lineage, save_lineage};
use upstream::register_upstream;
use write::window_filter;

pub(crate) const FILE_COLUMN: &str = "__inlet_file";
pub(crate) const DELETE_COLUMN: &str = "__inlet_delete";
pub(crate) const OP_COLUMN: &str = "__inlet_op";
/// The change data column of `cdc` files and of the change data feed.
pub(crate) const CHANGE_TYPE: &str = "_change_type";

/// The Delta `txn` application id of a derived table.
pub fn app_id(table: &str) -> String {
    format!("inlet.table.{table}")
}

/// `<layer>.<name>`, quarantine tables included.
pub(crate) fn table_name(name: &str) -> Result<TableName> {
    name.split_once('.')
        .map(|(layer, name)| TableName { layer: layer.to_owned(), name: name.to_owned() })
        .ok_or_else(|| EngineError::Internal(format!("`{name}` is not a table name")))
}

pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Runs one derived table.
pub async fn run_table(pipeline: &Pipeline, dag: &Dag, name: &str, run_id: &str) -> Result<TableReport> {
    run_table_window(pipeline, dag, name, run_id, None).await
}

/// Runs one table; with a window (a day), only that window of a `replace_partitions`
/// table is computed and replaced, whatever changed upstream, as `inlet backfill` does.
pub async fn run_table_window(
    pipeline: &Pipeline,
    dag: &Dag,
    name: &str,
    run_id: &str,
    window: Option<&str>,
) -> Result<TableReport> {
    let began = Instant::now();
    let mut run = match TableRun::open(pipeline, dag, name, run_id, window).await? {
        Opened::Run(run) => run,
        Opened::Done(mut report) => {
            report.seconds = began.elapsed().as_secs_f64();
            return Ok(*report);
        }
    };
    let result = run.run().await;
    run.report.seconds = began.elapsed().as_secs_f64();
    result.map(|()| run.report)
}

/// One run of one derived table, phase by phase.
struct TableRun<'a> {
    pipeline: &'a Pipeline,
    config: &'a TableConfig,
    name: &'a str,
    run_id: &'a str,
    sql: &'a str,
    window: Option<&'a str>,
    started_micros: i64,
    target: Table,
    quarantine: Table,
    app_id: String,
    /// The table's last `txn` version and the lineage of that commit.
    txn: Option<i64>,
    last: Option<Lineage>,
    upstream: Vec<Table>,
    upstream_ids: BTreeMap<String, String>,
    sql_hash: String,
    config_hash: String,
    report: TableReport,
}

/// A run that could start, or the report of one that had nothing to do.
enum Opened<'a> {
    Run(Box<TableRun<'a>>),
    Done(Box<TableReport>),
}

impl<'a> TableRun<'a> {
    /// Opens the table, its quarantine and its upstream tables; finishes the quarantine
    /// commit of a run that died after its table's commit; and stops when an upstream has no
    /// data yet or nothing changed since the last run.
    async fn open(
        pipeline: &'a Pipeline,
        dag: &'a Dag,
        name: &'a str,
        run_id: &'a str,
        window: Option<&'a str>,
    ) -> Result<Opened<'a>> {
        let started_micros = chrono::Utc::now().timestamp_micros();
        let config = pipeline
            .config
            .tables
            .get(name)
            .ok_or_else(|| EngineError::Internal(format!("no table config for `{name}`")))?;
        let mut report = TableReport::new(name, config.write);
        let Some(NodeKind::Table { sql }) = dag.node(name) else {
            return Err(EngineError::Internal(format!("`{name}` is not a derived table")));
        };
        let mut target = Table::open(name, table_url(&pipeline.lake, &table_name(name)?)?).await?;
        target.keep_stats_for(config.keys.iter().chain(&config.sequence_by).cloned());
        let app_id = app_id(name);
        let quarantine_name = table_name(name)?.quarantine();
        let mut quarantine =
            Table::open(&quarantine_name.to_string(), table_url(&pipeline.lake, &quarantine_name)?).await?;
        let txn = target.app_version(&app_id).await?;
        let last = last_lineage(&target, &app_id, txn).await?;
        finish_quarantine(last.as_ref(), &mut quarantine, &app_id).await?;
        if config.change_data_feed {
            target.enable_change_data_feed().await?;
        }
        if config.deletion_vectors {
            target.enable_deletion_vectors().await?;
        }
        let mut upstream = Vec::new();
        let mut upstream_ids = BTreeMap::new();
        for input in dag.upstream(name) {
            let table = Table::open(input, table_url(&pipeline.lake, &table_name(input)?)?).await?;
            let Some(version) = table.version() else {
                report.reason = Some(format!("upstream `{input}` has no data yet"));
                return Ok(Opened::Done(Box::new(report)));
            };
            report.upstream.insert(input.clone(), version);
            upstream_ids.insert(input.clone(), table.id().unwrap_or_default());
            upstream.push(table);
        }
        let run = TableRun {
            pipeline,
            config,
            name,
            run_id,
            sql,
            window,
            started_micros,
            sql_hash: hex(&Sha256::digest(sql.as_bytes())),
            config_hash: hex(&Sha256::digest(config_fingerprint(config).as_bytes())),
            target,
            quarantine,
            app_id,
            txn,
            last,
            upstream,
            upstream_ids,
            report,
        };
        if run.window.is_none()
            && run.target.exists()
            && let Some(last) = &run.last
            && last.upstream == run.report.upstream
            && last.upstream_ids.iter().all(|(t, id)| run.upstream_ids.get(t) == Some(id))
            && last.sql_hash == run.sql_hash
            && last.config_hash == run.config_hash
        {
            let mut report = run.report;
            report.status = TableStatus::UpToDate;
            report.reason = Some("nothing new upstream".to_owned());
            report.table_version = run.target.version();
            return Ok(Opened::Done(Box::new(report)));
        }
        Ok(Opened::Run(Box::new(run)))
    }

    /// Reads what is new upstream, runs the query, writes and commits.
    async fn run(&mut self) -> Result<()> {
        let context = SessionContext::new();
        let (mut lineage, nothing_new) = self.register(&context).await?;
        if nothing_new {
            // Only non-data commits upstream: remember that they were seen.
            save_lineage(&self.target, &lineage).await?;
            return self.up_to_date("no new upstream rows");
        }
        let (frame, window) = self.query(&context).await?;
        let checks =
            crate::expect::checks_for(self.name, &self.config.expect, self.config.keys.clone(), &self.pipeline.lake)
                .await?;
        let writer = Writer {
            table: self.name,
            config: self.config,
            target: &self.target,
            now_micros: self.started_micros,
            checks: checks.clone(),
            window: window.clone(),
        };
        let written = writer.write(&context, frame).await?;
        lineage.rows = written.rows;
        self.report.rows = written.rows;
        // The gate: a failure commits nothing; quarantined rows are staged now, published after.
        let quality = match &checks {
            Some(checks) => Some(checks.verdict(chrono::Utc::now().timestamp_micros())?),
            None => None,
        };
        self.report.quality = quality.clone();
        if let Some(checks) = &checks {
            lineage.quarantine = self.stage_quarantine(checks).await?;
        }
        let planned = match written.commit {
            // Rows went to the quarantine: the run commits (with the gate's report) even when
            // the table's rows do not change, so the quarantine commit has a version to follow.
            None if !lineage.quarantine.is_empty() => Some(Planned {
                adds: Vec::new(),
                removes: Vec::new(),
                cdc: Vec::new(),
                schema: None,
                kind: CommitKind::Append,
            }),
            other => other,
        };
        let Some(planned) = planned else {
            lineage.txn_version = self.txn.unwrap_or(0);
            save_lineage(&self.target, &lineage).await?;
            return self.up_to_date("the result changes nothing");
        };
        self.commit(planned, lineage, quality, window.as_ref()).await
    }

    fn up_to_date(&mut self, reason: &str) -> Result<()> {
        self.report.status = TableStatus::UpToDate;
        self.report.reason = Some(reason.to_owned());
        self.report.table_version = self.target.version();
        Ok(())
    }

    /// Registers the upstream tables in `context` (the files added since the last run, with
    /// `incremental`), and starts this run's lineage; whether reading incrementally found
    /// nothing new.
    async fn register(&self, context: &SessionContext) -> Result<(Lineage, bool)> {
        let last = self.last.as_ref();
        // Read incrementally from the versions last read, of the same tables (not recreated since).
        let incremental_from: Option<BTreeMap<String, i64>> =
            match (last, self.config.incremental && self.target.exists()) {
                _ if self.window.is_some() => None,
                (Some(last), true) => Some(
                    last.upstream
                        .iter()
                        // A lineage without an id for the table predates ids: take it as the same table.
                        .filter(|(t, _)| {
                            last.upstream_ids.get(*t).is_none_or(|id| Some(id) == self.upstream_ids.get(*t))
                        })
                        .map(|(t, v)| (t.clone(), *v))
                        .collect(),
                ),
                _ => None,
            };
        let new_files = register_upstream(
            context,
            self.name,
            &self.pipeline.config.tables,
            &self.upstream,
            incremental_from.as_ref(),
        )
        .await?;
        let mut lineage = Lineage {
            run_id: self.run_id.to_owned(),
            table: self.name.to_owned(),
            write: self.config.write,
            txn_version: self.txn.unwrap_or(0) + 1,
            sql: self.sql.to_owned(),
            sql_hash: self.sql_hash.clone(),
            upstream: self.report.upstream.clone(),
            upstream_ids: self.upstream_ids.clone(),
            config_hash: self.config_hash.clone(),
            incremental: self.config.incremental,
            rows: RowCounts::default(),
            quarantine: Vec::new(),
            window: self.window.map(str::to_owned),
        };
        if self.window.is_some() {
            // A window leaves the last full run's record of what it read, and with which query
            // and settings, alone: the next full run compares with that run.
            lineage.upstream = last.map(|l| l.upstream.clone()).unwrap_or_default();
            lineage.upstream_ids = last.map(|l| l.upstream_ids.clone()).unwrap_or_default();
            lineage.sql_hash = last.map(|l| l.sql_hash.clone()).unwrap_or_default();
            lineage.config_hash = last.map(|l| l.config_hash.clone()).unwrap_or_default();
        }
        let nothing_new = incremental_from.is_some() && new_files == 0;
        if nothing_new {
            lineage.txn_version = self.txn.unwrap_or(0);
        }
        Ok((lineage, nothing_new))
    }

    /// The query's result, restricted to the backfill window when there is one.
    async fn query(
        &mut self,
        context: &SessionContext,
    ) -> Result<(deltalake::datafusion::prelude::DataFrame, Option<Window>)> {
        let sql_error = |source: DataFusionError| EngineError::sql(self.name.to_owned(), source);
        let frame = context.sql(self.sql).await.map_err(sql_error)?;
        let Some(value) = self.window else {
            return Ok((frame, None));
        };
        let column = window_column(frame.schema().as_arrow(), &self.config.partition_by)
            .map_err(|message| EngineError::Transform { table: self.name.to_owned(), message })?;
        // A text column must hold days: check what the table has.
        for file in self.target.active_files().await? {
            if let Some(Some(day)) = file.partition_values.get(&column)
                && chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_err()
            {
                return Err(EngineError::Transform {
                    table: self.name.to_owned(),
                    message: format!(
                        "backfill windows are days, but partition column `{column}` holds `{day}` (not `YYYY-MM-DD`)"
                    ),
                });
            }
        }
        let window = Window { column, value: value.to_owned() };
        let frame = window_filter(frame, &window).map_err(sql_error)?;
        self.report.reason = Some(format!("window {} = {}", window.column, window.value));
        Ok((frame, Some(window)))
    }

    /// Stages the rows the expectations sent to quarantine; published after the commit.
    async fn stage_quarantine(&mut self, checks: &crate::expect::Checks) -> Result<Vec<deltalake::kernel::Add>> {
        let held = checks.take_quarantined()?;
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut staged = self.quarantine.writer_factory(&[]).writer(crate::schema::quarantine_schema());
        for (rows, rules) in held {
            let rows =
                crate::expect::quarantine_rows(&rows, &rules, self.name, self.run_id, self.started_micros, false)?;
            self.report.quarantined += rows.num_rows() as u64;
            staged.write(&rows).await?;
        }
        staged.close().await
    }

    /// The table's commit (rows, lineage, gate), then the quarantine's.
    async fn commit(
        &mut self,
        planned: Planned,
        lineage: Lineage,
        quality: Option<inlet_quality::GateReport>,
        window: Option<&Window>,
    ) -> Result<()> {
        let name = self.name;
        let lineage_json =
            serde_json::to_value(&lineage).map_err(|e| EngineError::Internal(format!("serialising lineage: {e}")))?;
        let inputs: Vec<String> = self.report.upstream.iter().map(|(t, v)| format!("{t}@v{v}")).collect();
        let rows = &lineage.rows;
        let summary = format!(
            "inlet {}{} {name} from {}: +{} ~{} -{} ={} (run {})",
            self.config.write.as_str(),
            window.map(|w| format!(" window {} = {}", w.column, w.value)).unwrap_or_default(),
            inputs.join(", "),
            rows.inserted,
            rows.updated,
            rows.deleted,
            rows.unchanged,
            self.run_id
        );
        let metadata = HashMap::from([(LINEAGE_KEY.to_owned(), lineage_json)]);
        let version = self
            .target
            .commit(Commit {
                adds: planned.adds,
                removes: planned.removes,
                cdc: planned.cdc,
                schema: planned.schema,
                partition_by: self.config.partition_by.clone(),
                change_data_feed: self.config.change_data_feed,
                deletion_vectors: self.config.deletion_vectors,
                operation: planned.kind,
                app_id: self.app_id.clone(),
                app_version: lineage.txn_version,
                metadata: crate::expect::quality_metadata(metadata, quality.as_ref(), summary)?,
            })
            .await?;
        if !lineage.quarantine.is_empty() {
            commit_quarantine(&mut self.quarantine, lineage.quarantine.clone(), &self.app_id, lineage.txn_version)
                .await?;
        }
        // The commit holds the lineage; the side file only saves reading the log next time.
        if let Err(err) = save_lineage(&self.target, &lineage).await {
            warn!(table = %name, error = %err, "lineage side file not written; the next run reads the log");
        }
        info!(table = %name, version, inserted = rows.inserted, updated = rows.updated, deleted = rows.deleted, "committed");
        self.report.status = TableStatus::Committed;
        self.report.table_version = Some(version);
        Ok(())
    }
}
