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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use deltalake::datafusion::catalog::{MemorySchemaProvider, TableProvider};
use deltalake::datafusion::common::{Column, ScalarValue};
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::prelude::{DataFrame, Expr, SessionContext, lit};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::config::{OnNewColumns, TableConfig, TableName, WriteMode};
use crate::dag::{Dag, NodeKind};
use crate::error::{EngineError, Result};
use crate::run::{Pipeline, ReportedError};
use crate::schema::delta_compatible;
use crate::table::{ActiveFile, Commit, CommitKind, Table, table_url};

/// Key of the lineage in a transform commit's `commitInfo`.
pub const LINEAGE_KEY: &str = "inlet_transform";
/// Side file holding the last lineage, for when old commits have expired.
const LINEAGE_FILE: &str = "_inlet/lineage.json";
pub(crate) const FILE_COLUMN: &str = "__inlet_file";
pub(crate) const DELETE_COLUMN: &str = "__inlet_delete";
pub(crate) const OP_COLUMN: &str = "__inlet_op";
/// The change data column of `cdc` files and of the change data feed.
pub(crate) const CHANGE_TYPE: &str = "_change_type";

/// The Delta `txn` application id of a derived table.
pub fn app_id(table: &str) -> String {
    format!("inlet.table.{table}")
}

/// Rows a run changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCounts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
}

/// What a table read and wrote: recorded in each of its commits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lineage {
    pub run_id: String,
    pub table: String,
    pub write: WriteMode,
    /// The table's `txn` version this lineage belongs to.
    pub txn_version: i64,
    pub sql: String,
    /// SHA-256 of the SQL text, hex.
    pub sql_hash: String,
    /// Version of every upstream table read.
    pub upstream: BTreeMap<String, i64>,
    /// Id (`metaData.id`) of every upstream table read: a recreated table starts over.
    #[serde(default)]
    pub upstream_ids: BTreeMap<String, String>,
    /// SHA-256 of the table's write settings (mode, keys, sequence, deletes, partitions, ...).
    #[serde(default)]
    pub config_hash: String,
    pub incremental: bool,
    pub rows: RowCounts,
    /// Quarantine files this run staged, published right after its commit (a run that dies
    /// in between has the next one publish them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantine: Vec<deltalake::kernel::Add>,
    /// The backfill window this run replaced (`inlet backfill`); its `upstream` is then the
    /// last full run's, so a full run still sees what changed since that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
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

/// `<layer>.<name>`, quarantine tables included.
fn table_name(name: &str) -> Result<TableName> {
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
    let sql_hash = hex(&Sha256::digest(sql.as_bytes()));
    let mut target = Table::open(name, table_url(&pipeline.lake, &table_name(name)?)?).await?;
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

    let mut upstream = Vec::new();
    let mut upstream_ids = BTreeMap::new();
    for input in dag.upstream(name) {
        let table = Table::open(input, table_url(&pipeline.lake, &table_name(input)?)?).await?;
        let Some(version) = table.version() else {
            report.reason = Some(format!("upstream `{input}` has no data yet"));
            report.seconds = began.elapsed().as_secs_f64();
            return Ok(report);
        };
        report.upstream.insert(input.clone(), version);
        upstream_ids.insert(input.clone(), table.id().unwrap_or_default());
        upstream.push(table);
    }
    let config_hash = hex(&Sha256::digest(config_fingerprint(config).as_bytes()));
    if window.is_none()
        && target.exists()
        && let Some(last) = &last
        && last.upstream == report.upstream
        && last.upstream_ids.iter().all(|(t, id)| upstream_ids.get(t) == Some(id))
        && last.sql_hash == sql_hash
        && last.config_hash == config_hash
    {
        report.status = TableStatus::UpToDate;
        report.reason = Some("nothing new upstream".to_owned());
        report.table_version = target.version();
        report.seconds = began.elapsed().as_secs_f64();
        return Ok(report);
    }

    let context = SessionContext::new();
    // Read incrementally from the versions last read, of the same tables (not recreated since).
    let incremental_from: Option<BTreeMap<String, i64>> = match (&last, config.incremental && target.exists()) {
        _ if window.is_some() => None,
        (Some(last), true) => Some(
            last.upstream
                .iter()
                // A lineage without an id for the table predates ids: take it as the same table.
                .filter(|(t, _)| last.upstream_ids.get(*t).is_none_or(|id| Some(id) == upstream_ids.get(*t)))
                .map(|(t, v)| (t.clone(), *v))
                .collect(),
        ),
        _ => None,
    };
    let new_files =
        register_upstream(&context, name, &pipeline.config.tables, &upstream, incremental_from.as_ref()).await?;
    let mut lineage = Lineage {
        run_id: run_id.to_owned(),
        table: name.to_owned(),
        write: config.write,
        txn_version: txn.unwrap_or(0) + 1,
        sql: sql.clone(),
        sql_hash,
        upstream: report.upstream.clone(),
        upstream_ids,
        config_hash,
        incremental: config.incremental,
        rows: RowCounts::default(),
        quarantine: Vec::new(),
        window: window.map(str::to_owned),
    };
    if window.is_some() {
        // A window leaves the last full run's record of what it read, and with which query
        // and settings, alone: the next full run compares with that run.
        lineage.upstream = last.as_ref().map(|l| l.upstream.clone()).unwrap_or_default();
        lineage.upstream_ids = last.as_ref().map(|l| l.upstream_ids.clone()).unwrap_or_default();
        lineage.sql_hash = last.as_ref().map(|l| l.sql_hash.clone()).unwrap_or_default();
        lineage.config_hash = last.as_ref().map(|l| l.config_hash.clone()).unwrap_or_default();
    }
    if incremental_from.is_some() && new_files == 0 {
        // Only non-data commits upstream: remember that they were seen.
        lineage.txn_version = txn.unwrap_or(0);
        save_lineage(&target, &lineage).await?;
        report.status = TableStatus::UpToDate;
        report.reason = Some("no new upstream rows".to_owned());
        report.table_version = target.version();
        report.seconds = began.elapsed().as_secs_f64();
        return Ok(report);
    }

    let sql_error = |source: DataFusionError| EngineError::sql(name.to_owned(), source);
    let mut frame = context.sql(sql).await.map_err(sql_error)?;
    let window = match window {
        Some(value) => {
            let column = window_column(frame.schema().as_arrow(), &config.partition_by)
                .map_err(|message| EngineError::Transform { table: name.to_owned(), message })?;
            // A text column must hold days: check what the table has.
            for file in target.active_files().await? {
                if let Some(Some(day)) = file.partition_values.get(&column)
                    && chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_err()
                {
                    return Err(EngineError::Transform {
                        table: name.to_owned(),
                        message: format!(
                            "backfill windows are days, but partition column `{column}` holds `{day}` (not `YYYY-MM-DD`)"
                        ),
                    });
                }
            }
            let window = Window { column, value: value.to_owned() };
            frame = window_filter(frame, &window).map_err(sql_error)?;
            report.reason = Some(format!("window {} = {}", window.column, window.value));
            Some(window)
        }
        None => None,
    };
    let checks = crate::expect::checks_for(name, &config.expect, config.keys.clone(), &pipeline.lake).await?;
    let writer = Writer {
        table: name,
        config,
        target: &target,
        now_micros: started_micros,
        checks: checks.clone(),
        window: window.clone(),
    };
    let written = writer.write(&context, frame).await?;
    lineage.rows = written.rows;
    report.rows = written.rows;
    // The gate: a failure commits nothing; quarantined rows are staged now, published after.
    let quality = match &checks {
        Some(checks) => Some(checks.verdict(chrono::Utc::now().timestamp_micros())?),
        None => None,
    };
    report.quality = quality.clone();
    if let Some(checks) = &checks {
        let held = checks.take_quarantined()?;
        if !held.is_empty() {
            let mut staged = quarantine.writer_factory(&[]).writer(crate::schema::quarantine_schema());
            for (rows, rules) in held {
                let rows = crate::expect::quarantine_rows(&rows, &rules, name, run_id, started_micros, false)?;
                report.quarantined += rows.num_rows() as u64;
                staged.write(&rows).await?;
            }
            lineage.quarantine = staged.close().await?;
        }
    }
    let written_commit = match written.commit {
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
    let Some(planned) = written_commit else {
        lineage.txn_version = txn.unwrap_or(0);
        save_lineage(&target, &lineage).await?;
        report.status = TableStatus::UpToDate;
        report.reason = Some("the result changes nothing".to_owned());
        report.table_version = target.version();
        report.seconds = began.elapsed().as_secs_f64();
        return Ok(report);
    };
    let lineage_json =
        serde_json::to_value(&lineage).map_err(|e| EngineError::Internal(format!("serialising lineage: {e}")))?;
    let inputs: Vec<String> = report.upstream.iter().map(|(t, v)| format!("{t}@v{v}")).collect();
    let rows = &lineage.rows;
    let summary = format!(
        "inlet {}{} {name} from {}: +{} ~{} -{} ={} (run {run_id})",
        config.write.as_str(),
        window.as_ref().map(|w| format!(" window {} = {}", w.column, w.value)).unwrap_or_default(),
        inputs.join(", "),
        rows.inserted,
        rows.updated,
        rows.deleted,
        rows.unchanged
    );
    let metadata = HashMap::from([(LINEAGE_KEY.to_owned(), lineage_json)]);
    let version = target
        .commit(Commit {
            adds: planned.adds,
            removes: planned.removes,
            cdc: planned.cdc,
            schema: planned.schema,
            partition_by: config.partition_by.clone(),
            change_data_feed: config.change_data_feed,
            operation: planned.kind,
            app_id: app_id.clone(),
            app_version: lineage.txn_version,
            metadata: crate::expect::quality_metadata(metadata, quality.as_ref(), summary)?,
        })
        .await?;
    if !lineage.quarantine.is_empty() {
        commit_quarantine(&mut quarantine, lineage.quarantine.clone(), &app_id, lineage.txn_version).await?;
    }
    // The commit holds the lineage; the side file only saves reading the log next time.
    if let Err(err) = save_lineage(&target, &lineage).await {
        warn!(table = %name, error = %err, "lineage side file not written; the next run reads the log");
    }
    info!(table = %name, version, inserted = rows.inserted, updated = rows.updated, deleted = rows.deleted, "committed");
    report.status = TableStatus::Committed;
    report.table_version = Some(version);
    report.seconds = began.elapsed().as_secs_f64();
    Ok(report)
}

/// Publishes rows a derived table's run quarantined, after the table's commit, with the
/// table's app id and `txn` version (so it happens once).
async fn commit_quarantine(
    quarantine: &mut Table,
    adds: Vec<deltalake::kernel::Add>,
    app_id: &str,
    txn_version: i64,
) -> Result<i64> {
    quarantine
        .commit(Commit {
            adds,
            removes: Vec::new(),
            cdc: Vec::new(),
            schema: crate::ingest::quarantine_schema_change(quarantine)?,
            partition_by: Vec::new(),
            change_data_feed: false,
            operation: CommitKind::Append,
            app_id: app_id.to_owned(),
            app_version: txn_version,
            metadata: HashMap::new(),
        })
        .await
}

/// A run that died between the table's commit and its quarantine commit left the
/// quarantine's files staged and named in its lineage: publish them now.
async fn finish_quarantine(last: Option<&Lineage>, quarantine: &mut Table, app_id: &str) -> Result<()> {
    let Some(last) = last.filter(|l| !l.quarantine.is_empty()) else {
        return Ok(());
    };
    if quarantine.app_version(app_id).await?.is_some_and(|v| v >= last.txn_version) {
        return Ok(());
    }
    info!(table = %last.table, files = last.quarantine.len(), "publishing the quarantine of an interrupted run");
    commit_quarantine(quarantine, last.quarantine.clone(), app_id, last.txn_version).await?;
    Ok(())
}

/// The write settings a result depends on, as text: a change re-runs the table.
fn config_fingerprint(config: &TableConfig) -> String {
    format!(
        "write={:?};keys={:?};sequence_by={:?};delete_when={:?};incremental={};partition_by={:?};track_columns={:?};deletes={:?};snapshot={};on_new_columns={:?}",
        config.write,
        config.keys,
        config.sequence_by,
        config.delete_when.as_ref().map(|d| d.get_ref()),
        config.incremental,
        config.partition_by,
        config.track_columns,
        config.deletes,
        config.source_is_snapshot,
        config.on_new_columns
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The lineage of the table's last committing run (`txn` version `txn`): from the side
/// file when it belongs to that version, else from that commit in the log.
async fn last_lineage(target: &Table, app_id: &str, txn: Option<i64>) -> Result<Option<Lineage>> {
    let Some(txn) = txn else {
        return Ok(None);
    };
    if let Some(bytes) = target.read_side_file(LINEAGE_FILE).await?
        && let Ok(lineage) = serde_json::from_slice::<Lineage>(&bytes)
        && lineage.txn_version == txn
    {
        return Ok(Some(lineage));
    }
    let lost = |why: String| EngineError::Ledger {
        table: target.name.clone(),
        app_id: app_id.to_owned(),
        message: format!("the lineage of `txn` version {txn} is not in `{LINEAGE_FILE}`, and {why}"),
    };
    match crate::log::commit_of_txn(target, app_id, None).await? {
        crate::log::TxnCommit::Found(commit) => match commit.info::<Lineage>(&target.name, LINEAGE_KEY)? {
            Some(lineage) if lineage.txn_version == txn => Ok(Some(lineage)),
            Some(lineage) => {
                Err(lost(format!("commit {} holds the lineage of `txn` {}", commit.version, lineage.txn_version)))
            }
            None => Err(lost(format!("commit {} carries no lineage", commit.version))),
        },
        crate::log::TxnCommit::Expired { .. } => Err(lost("its commit has expired from the log".to_owned())),
        crate::log::TxnCommit::Never => Ok(None),
    }
}

async fn save_lineage(target: &Table, lineage: &Lineage) -> Result<()> {
    if !target.exists() {
        return Ok(());
    }
    let bytes = serde_json::to_vec_pretty(lineage).map_err(|e| EngineError::Internal(format!("lineage: {e}")))?;
    target.write_side_file(LINEAGE_FILE, bytes).await
}

/// Registers every upstream table as `<layer>.<name>`; returns how many data files were
/// selected when reading incrementally.
async fn register_upstream(
    context: &SessionContext,
    name: &str,
    tables: &BTreeMap<String, TableConfig>,
    upstream: &[Table],
    incremental_from: Option<&BTreeMap<String, i64>>,
) -> Result<usize> {
    let sql_error = |source: DataFusionError| EngineError::sql(name.to_owned(), source);
    let catalog = context
        .catalog("datafusion")
        .ok_or_else(|| EngineError::Internal("DataFusion has no default catalog".into()))?;
    let write = tables.get(name).map(|c| c.write).unwrap_or_default();
    let mut new_files = 0;
    for table in upstream {
        let table_ref = table_name(&table.name)?;
        if catalog.schema(&table_ref.layer).is_none() {
            catalog.register_schema(&table_ref.layer, Arc::new(MemorySchemaProvider::new())).map_err(sql_error)?;
        }
        table.register_store(&context.state())?;
        let since = incremental_from.and_then(|versions| versions.get(&table.name)).copied();
        let provider: Arc<dyn TableProvider> = match since {
            Some(since) => {
                let changes = crate::log::changes_since(&table, since).await?;
                // Rows rewritten upstream: its change data feed, when whole, says which changed.
                // A snapshot must be read whole: the feed holds only what changed.
                let snapshot = tables.get(name).is_some_and(|c| c.write == WriteMode::Scd2 && c.source_is_snapshot);
                let feed = match (&changes, row_identity(tables.get(&table.name))) {
                    (Some(changes), Some(identity)) if changes.rewrites && !snapshot => {
                        match table.change_data(since, &context.state()).await? {
                            Some(feed) => Some(changed_rows(context, &table.name, feed, &identity).await?),
                            None => None,
                        }
                    }
                    _ => None,
                };
                if let Some(feed) = feed {
                    new_files += 1;
                    feed
                } else {
                    match changes {
                        Some(changes) if !changes.rewrites => {
                            new_files += changes.added.len();
                            if changes.added.is_empty() {
                                let full = table.scan(None, None).await?;
                                Arc::new(MemTable::try_new(full.schema(), vec![vec![]]).map_err(sql_error)?)
                            } else {
                                table.scan(Some(changes.added), None).await?
                            }
                        }
                        _ if write == WriteMode::Append => {
                            return Err(EngineError::Transform {
                                table: name.to_owned(),
                                message: format!(
                                    "upstream `{}` was rewritten (or its log expired) since version {since}: an incremental append cannot tell new rows from old; run it once with `incremental = false`",
                                    table.name
                                ),
                            });
                        }
                        // Merge and SCD2 are idempotent: re-reading everything is only slower.
                        _ => {
                            new_files += 1;
                            table.scan(None, None).await?
                        }
                    }
                }
            }
            None => {
                new_files += 1;
                table.scan(None, None).await?
            }
        };
        let schema = catalog
            .schema(&table_ref.layer)
            .ok_or_else(|| EngineError::Internal(format!("schema `{}` vanished", table_ref.layer)))?;
        schema.register_table(table_ref.name.clone(), provider).map_err(sql_error)?;
    }
    Ok(new_files)
}

/// What identifies a row of a derived table across versions, for reading its change data:
/// the keys of a merge table, the keys and `_valid_from` of an scd2 table.
fn row_identity(config: Option<&TableConfig>) -> Option<Vec<String>> {
    let config = config?;
    match config.write {
        WriteMode::Merge if !config.keys.is_empty() => Some(config.keys.clone()),
        WriteMode::Scd2 if !config.keys.is_empty() => {
            Some(config.keys.iter().cloned().chain([crate::scd2::VALID_FROM.to_owned()]).collect())
        }
        _ => None,
    }
}

/// The rows of an upstream table changed in its change data `feed`, as they are now: per
/// row (by `identity`) the latest insert or post-image, none for a row deleted last. The
/// table's own columns only, so the same SQL runs over it as over the whole table.
async fn changed_rows(
    context: &SessionContext,
    table: &str,
    feed: Arc<dyn TableProvider>,
    identity: &[String],
) -> Result<Arc<dyn TableProvider>> {
    let sql_error = |source: DataFusionError| EngineError::sql(table.to_owned(), source);
    let feed_name = format!("__inlet_feed_{}", table.replace('.', "_"));
    context.register_table(feed_name.as_str(), feed).map_err(sql_error)?;
    let identity: Vec<String> = identity.iter().map(|c| quote(c)).collect();
    let sql = format!(
        "SELECT * EXCLUDE ({CHANGE_TYPE}, _commit_version, _commit_timestamp, __inlet_rn) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {} ORDER BY _commit_version DESC, CASE WHEN {CHANGE_TYPE} = 'delete' THEN 1 ELSE 0 END) AS __inlet_rn FROM {feed_name} WHERE {CHANGE_TYPE} IN ('insert', 'update_postimage', 'delete')) WHERE __inlet_rn = 1 AND {CHANGE_TYPE} <> 'delete'",
        identity.join(", ")
    );
    let frame = context.sql(&sql).await.map_err(sql_error)?;
    Ok(frame.into_view())
}

/// The commit a write plans.
pub(crate) struct Planned {
    pub(crate) adds: Vec<deltalake::kernel::Add>,
    pub(crate) removes: Vec<deltalake::kernel::Remove>,
    /// Change data files, when the table records change data and the write rewrote rows.
    pub(crate) cdc: Vec<deltalake::kernel::AddCDCFile>,
    pub(crate) schema: Option<SchemaRef>,
    pub(crate) kind: CommitKind,
}

pub(crate) struct Written {
    pub(crate) rows: RowCounts,
    /// `None` when the result changes nothing.
    pub(crate) commit: Option<Planned>,
}

pub(crate) struct Writer<'a> {
    pub(crate) table: &'a str,
    pub(crate) config: &'a TableConfig,
    pub(crate) target: &'a Table,
    /// When the run started: the valid time of `scd2` rows without `sequence_by`.
    pub(crate) now_micros: i64,
    /// The table's expectations, applied to the query result.
    pub(crate) checks: Option<Arc<crate::expect::Checks>>,
    /// `replace_partitions` of one backfill window: the window is replaced even when the
    /// result has no rows for it.
    pub(crate) window: Option<Window>,
}

impl Writer<'_> {
    /// Writes a result with the table's strategy; plans the commit.
    pub(crate) async fn write(&self, context: &SessionContext, frame: DataFrame) -> Result<Written> {
        match self.config.write {
            WriteMode::Append | WriteMode::Overwrite | WriteMode::ReplacePartitions => {
                self.replace_or_append(frame).await
            }
            WriteMode::Merge => self.merge(context, frame).await,
            WriteMode::Scd2 => self.scd2(context, frame).await,
        }
    }

    pub(crate) fn sql_error(&self, source: DataFusionError) -> EngineError {
        EngineError::sql(self.table.to_owned(), source)
    }

    pub(crate) fn transform_error(&self, message: String) -> EngineError {
        EngineError::Transform { table: self.table.to_owned(), message }
    }

    /// The schema to write: the table's columns (with new result columns as
    /// `on_new_columns` says), or the result's for a new table or an overwrite. Returns the
    /// schema and whether it differs from the table's.
    pub(crate) fn plan_schema(&self, result: &Schema, replace: bool) -> Result<(SchemaRef, bool)> {
        let result_fields: Vec<FieldRef> = result
            .fields()
            .iter()
            .filter(|f| !f.name().starts_with("__inlet_"))
            .map(|f| Arc::new(Field::new(f.name(), delta_compatible(f.data_type()), true)))
            .collect();
        for column in self.config.keys.iter().chain(&self.config.partition_by).chain(&self.config.sequence_by) {
            if !result_fields.iter().any(|f| f.name() == column) {
                return Err(self.transform_error(format!("the query result has no column `{column}`")));
            }
        }
        let existing = self.target.arrow_schema()?;
        let Some(existing) = existing.filter(|_| !replace) else {
            let schema = Arc::new(Schema::new(result_fields));
            let changed = match self.target.arrow_schema()? {
                Some(old) => !same_columns(&old, &schema),
                None => true,
            };
            return Ok((schema, changed));
        };
        let mut fields: Vec<FieldRef> = existing.fields().iter().cloned().collect();
        let mut added = Vec::new();
        for field in &result_fields {
            if !fields.iter().any(|f| f.name() == field.name()) {
                added.push(field.clone());
            }
        }
        if !added.is_empty() {
            let names: Vec<&str> = added.iter().map(|f| f.name().as_str()).collect();
            match self.config.on_new_columns {
                OnNewColumns::Add => fields.extend(added.iter().cloned()),
                OnNewColumns::Ignore => {}
                OnNewColumns::Fail | OnNewColumns::Rescue => {
                    return Err(self.transform_error(format!(
                        "the query result has new columns {names:?} and `on_new_columns = \"{}\"`",
                        if self.config.on_new_columns == OnNewColumns::Fail { "fail" } else { "rescue" }
                    )));
                }
            }
        }
        let changed = fields.len() != existing.fields().len();
        Ok((Arc::new(Schema::new(fields)), changed))
    }

    pub(crate) fn check_partitioning(&self) -> Result<()> {
        let Some(existing) = self.target.partition_columns() else {
            return Ok(());
        };
        if existing != self.config.partition_by {
            return Err(self.transform_error(format!(
                "the table is partitioned by {existing:?} but `partition_by` says {:?}; overwrite it under a new name or change the config",
                self.config.partition_by
            )));
        }
        Ok(())
    }

    /// `append`, `overwrite` and `replace_partitions`: stream the result into new files.
    async fn replace_or_append(&self, frame: DataFrame) -> Result<Written> {
        let replace = self.config.write == WriteMode::Overwrite;
        self.check_partitioning()?;
        let (schema, changed) = self.plan_schema(frame.schema().as_arrow(), replace)?;
        let factory = self.target.writer_factory(&self.config.partition_by);
        let (rows, adds) = self.write_frame_with(frame, &schema, factory, self.checks.clone()).await?;
        let counts = RowCounts { inserted: rows, ..RowCounts::default() };
        let schema = (changed || !self.target.exists()).then_some(schema);
        let planned = match self.config.write {
            WriteMode::Append if adds.is_empty() => None,
            WriteMode::Append => {
                Some(Planned { adds, removes: Vec::new(), cdc: Vec::new(), schema, kind: CommitKind::Append })
            }
            WriteMode::ReplacePartitions if adds.is_empty() && self.window.is_none() => None,
            WriteMode::ReplacePartitions => {
                let replaced: BTreeSet<Vec<(String, Option<String>)>> =
                    adds.iter().map(|a| sorted(&a.partition_values)).collect();
                let in_window = |values: &HashMap<String, Option<String>>| {
                    self.window.as_ref().is_some_and(|w| values.get(&w.column) == Some(&Some(w.value.clone())))
                };
                let removes: Vec<deltalake::kernel::Remove> = self
                    .target
                    .active_files()
                    .await?
                    .into_iter()
                    .filter(|f| replaced.contains(&sorted(&f.partition_values)) || in_window(&f.partition_values))
                    .map(|f| f.remove)
                    .collect();
                if adds.is_empty() && removes.is_empty() {
                    return Ok(Written { rows: counts, commit: None });
                }
                let predicate = match &self.window {
                    Some(w) => partition_predicate(&BTreeSet::from([vec![(w.column.clone(), Some(w.value.clone()))]])),
                    None => partition_predicate(&replaced),
                };
                Some(Planned {
                    adds,
                    removes,
                    cdc: Vec::new(),
                    schema,
                    kind: CommitKind::ReplacePartitions { predicate },
                })
            }
            _ => {
                let removes = self.target.active_files().await?.into_iter().map(|f| f.remove).collect();
                Some(Planned { adds, removes, cdc: Vec::new(), schema, kind: CommitKind::Overwrite })
            }
        };
        Ok(Written { rows: counts, commit: planned })
    }

    /// The result with `__inlet_delete` (from `delete_when`), one row per key: the latest by
    /// `sequence_by`; without it, a repeated key is an error naming it.
    pub(crate) async fn keyed_source(
        &self,
        context: &SessionContext,
        frame: DataFrame,
        schema: &SchemaRef,
    ) -> Result<DataFrame> {
        let batches = frame.collect().await.map_err(|e| self.sql_error(e))?;
        let batches = self.checked(batches, schema)?;
        let result = MemTable::try_new(schema.clone(), vec![batches]).map_err(|e| self.sql_error(e))?;
        context.register_table("__inlet_result", Arc::new(result)).map_err(|e| self.sql_error(e))?;
        let keys: Vec<String> = self.config.keys.iter().map(|k| quote(k)).collect();
        let keys = keys.join(", ");
        self.check_null_keys(context).await?;
        if let Some(sequence) = &self.config.sequence_by {
            let nulls = self
                .query(context, &format!("SELECT COUNT(*) FROM __inlet_result WHERE {} IS NULL", quote(sequence)))
                .await?;
            let count = first_count(&nulls);
            if count > 0 {
                return Err(self.transform_error(format!(
                    "{count} result rows have a NULL `{sequence}`; without it the latest row cannot be told"
                )));
            }
        }
        let delete = self.delete_flag();
        let flagged = format!("SELECT *, {delete} AS {DELETE_COLUMN} FROM __inlet_result");
        // Most batches have one row per key: count first, sort only when needed.
        let distinct = self.query(context, &format!(
                "SELECT (SELECT COUNT(*) FROM __inlet_result) - (SELECT COUNT(*) FROM (SELECT {keys} FROM __inlet_result GROUP BY {keys}))"
            )).await?;
        let repeated = first_count(&distinct) > 0;
        if repeated && let Some(sequence) = &self.config.sequence_by {
            // Two different rows for one key at one instant: no latest to keep.
            let ties = self.query(context, &format!(
                    "SELECT {keys}, {s}, COUNT(*) AS n FROM (SELECT DISTINCT * FROM __inlet_result) GROUP BY {keys}, {s} HAVING COUNT(*) > 1 LIMIT 3",
                    s = quote(sequence)
                )).await?;
            if let Some(described) = describe_rows(&ties) {
                return Err(self.transform_error(format!(
                    "different rows for one key with the same `{sequence}` ({described}); the latest is ambiguous"
                )));
            }
        }
        let sql = match &self.config.sequence_by {
            Some(sequence) if repeated => format!(
                "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {} DESC NULLS LAST) AS __inlet_rn FROM ({flagged})) WHERE __inlet_rn = 1",
                quote(sequence)
            ),
            _ if !repeated => flagged,
            _ => {
                let duplicates = self.query(context, &format!(
                        "SELECT {keys}, COUNT(*) AS n FROM __inlet_result GROUP BY {keys} HAVING COUNT(*) > 1 LIMIT 3"
                    )).await?;
                if let Some(described) = describe_rows(&duplicates) {
                    return Err(self.transform_error(format!(
                        "duplicate keys in the query result ({described}); set `sequence_by` to keep the latest"
                    )));
                }
                flagged
            }
        };
        let frame = context.sql(&sql).await.map_err(|e| self.sql_error(e))?;
        let frame = if self.config.sequence_by.is_some() && repeated {
            frame.drop_columns(&["__inlet_rn"]).map_err(|e| self.sql_error(e))?
        } else {
            frame
        };
        Ok(frame)
    }

    /// `merge`: upsert by key, latest by `sequence_by`, `delete_when` deletes.
    ///
    /// First the join of the (deduplicated) result against the table's keys, pruned to the
    /// files whose key range overlaps the result's, says what each result row does; then only
    /// the files holding updated or deleted keys are read again and rewritten without those
    /// keys, and the updated and new rows are written beside them.
    async fn merge(&self, context: &SessionContext, frame: DataFrame) -> Result<Written> {
        self.check_partitioning()?;
        let (schema, changed) = self.plan_schema(frame.schema().as_arrow(), false)?;
        let started = Instant::now();
        let source = self.keyed_source(context, frame, &schema).await?;
        let source = source.cache().await.map_err(|e| self.sql_error(e))?;
        context.register_table("__inlet_src", source.into_view()).map_err(|e| self.sql_error(e))?;
        debug!(table = %self.table, elapsed_ms = started.elapsed().as_millis() as u64, "merge source ready");
        let keys = &self.config.keys;
        let on = |a: &str, b: &str| -> String {
            keys.iter().map(|k| format!("({a}.{k} = {b}.{k})", k = quote(k))).collect::<Vec<_>>().join(" AND ")
        };
        let columns: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
        let source_columns = columns.iter().map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", ");
        let predicate = on("target", "source");

        if !self.target.exists() {
            let sql = format!("SELECT {source_columns} FROM __inlet_src s WHERE NOT s.{DELETE_COLUMN}");
            let (inserted, adds) = self.write_sql(context, &sql, &schema).await?;
            let rows = RowCounts { inserted, ..RowCounts::default() };
            let commit = (!adds.is_empty()).then(|| Planned {
                adds,
                removes: Vec::new(),
                cdc: Vec::new(),
                schema: Some(schema.clone()),
                kind: CommitKind::Merge { predicate },
            });
            return Ok(Written { rows, commit });
        }

        let existing = self.target.arrow_schema()?.unwrap_or_else(|| schema.clone());
        let files = self.target.active_files().await?;
        let target = self.target.scan(None, Some(FILE_COLUMN)).await?;
        context.register_table("__inlet_tgt", target).map_err(|e| self.sql_error(e))?;
        self.register_candidates(context).await?;

        // Rows at the same instant update only when they differ, column by column; that compare
        // reads every column, so it runs second and only over the files holding such ties.
        let equal: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| {
                let c = quote(f.name());
                if existing.field_with_name(f.name()).is_ok() {
                    format!("(t.{c} IS NOT DISTINCT FROM s.{c})")
                } else {
                    format!("(s.{c} IS NULL)")
                }
            })
            .collect();
        let equal = equal.join(" AND ");
        let key_columns = keys.iter().map(|k| format!("s.{}", quote(k))).collect::<Vec<_>>().join(", ");
        let classify = |late: &str, same: &str, target: &str| {
            format!(
                "SELECT t.{FILE_COLUMN} AS {FILE_COLUMN}, {key_columns}, CASE WHEN {late} THEN 'late' WHEN s.{DELETE_COLUMN} THEN 'delete' WHEN {same} ELSE 'update' END AS {OP_COLUMN} FROM __inlet_src s JOIN {target} t ON {on}",
                on = on("s", "t"),
            )
        };
        // The result (small) is the join's build side; the table is streamed. With
        // `sequence_by`, the first pass reads only keys, sequence and file.
        let matched = match &self.config.sequence_by {
            Some(sequence) => {
                let c = quote(sequence);
                let first = classify(&format!("s.{c} < t.{c}"), &format!("s.{c} = t.{c} THEN 'tie'"), "__inlet_cand");
                let first = context.sql(&first).await.map_err(|e| self.sql_error(e))?;
                let first = first.cache().await.map_err(|e| self.sql_error(e))?;
                context.register_table("__inlet_first", first.clone().into_view()).map_err(|e| self.sql_error(e))?;
                let tie_files = self
                    .strings(
                        context,
                        &format!("SELECT DISTINCT {FILE_COLUMN} FROM __inlet_first WHERE {OP_COLUMN} = 'tie'"),
                    )
                    .await?;
                if tie_files.is_empty() {
                    first
                } else {
                    let tied = self.target.scan(Some(tie_files), Some(FILE_COLUMN)).await?;
                    context.register_table("__inlet_tied", tied).map_err(|e| self.sql_error(e))?;
                    let resolved = format!(
                        "SELECT t.{FILE_COLUMN} AS {FILE_COLUMN}, {key_columns}, CASE WHEN {equal} THEN 'same' ELSE 'update' END AS {OP_COLUMN} FROM __inlet_src s JOIN __inlet_tied t ON {on} WHERE s.{c} = t.{c} AND NOT s.{DELETE_COLUMN}",
                        on = on("s", "t"),
                    );
                    let sql = format!("SELECT * FROM __inlet_first WHERE {OP_COLUMN} <> 'tie' UNION ALL {resolved}");
                    let resolved = context.sql(&sql).await.map_err(|e| self.sql_error(e))?;
                    resolved.cache().await.map_err(|e| self.sql_error(e))?
                }
            }
            None => {
                let sql = classify("false", &format!("{equal} THEN 'same'"), "__inlet_cand");
                let matched = context.sql(&sql).await.map_err(|e| self.sql_error(e))?;
                matched.cache().await.map_err(|e| self.sql_error(e))?
            }
        };
        context.register_table("__inlet_matched", matched.into_view()).map_err(|e| self.sql_error(e))?;
        debug!(table = %self.table, elapsed_ms = started.elapsed().as_millis() as u64, "merge matched");

        let counts = self
            .query(context, &format!("SELECT {OP_COLUMN}, COUNT(*) FROM __inlet_matched GROUP BY {OP_COLUMN}"))
            .await?;
        let counts = op_counts(&counts);
        let touched = self
            .strings(
                context,
                &format!(
                    "SELECT DISTINCT {FILE_COLUMN} FROM __inlet_matched WHERE {OP_COLUMN} IN ('update', 'delete')"
                ),
            )
            .await?;
        let removes = removes_for(self.target, &files, &touched)?;

        let mut adds = Vec::new();
        // Without rewritten rows, the adds are the inserts: change data needs no files of its own.
        let mut cdc = Vec::new();
        if !removes.is_empty() {
            // Only the touched files, read again, minus the changed keys.
            let touched_files = self.target.scan(Some(touched.clone()), None).await?;
            context.register_table("__inlet_rewrite", touched_files).map_err(|e| self.sql_error(e))?;
            let target_columns: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| {
                    let c = quote(f.name());
                    if existing.field_with_name(f.name()).is_ok() { format!("t.{c}") } else { format!("NULL AS {c}") }
                })
                .collect();
            let kept = format!(
                "SELECT {} FROM (SELECT {} FROM __inlet_matched WHERE {OP_COLUMN} IN ('update', 'delete')) m RIGHT ANTI JOIN __inlet_rewrite t ON {}",
                target_columns.join(", "),
                keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", "),
                on("m", "t"),
            );
            adds.extend(self.write_sql(context, &kept, &schema).await?.1);
            debug!(table = %self.table, elapsed_ms = started.elapsed().as_millis() as u64, "merge kept rows written");
            if self.target.change_data_feed() {
                let changes = format!(
                    "SELECT {}, CASE WHEN m.{OP_COLUMN} = 'update' THEN 'update_preimage' ELSE 'delete' END AS {CHANGE_TYPE} FROM (SELECT {}, {OP_COLUMN} FROM __inlet_matched WHERE {OP_COLUMN} IN ('update', 'delete')) m JOIN __inlet_rewrite t ON {} \
                     UNION ALL SELECT {source_columns}, CASE WHEN m.{OP_COLUMN} = 'update' THEN 'update_postimage' ELSE 'insert' END FROM __inlet_src s LEFT JOIN __inlet_matched m ON {} WHERE (m.{OP_COLUMN} IS NULL AND NOT s.{DELETE_COLUMN}) OR m.{OP_COLUMN} = 'update'",
                    target_columns.join(", "),
                    keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", "),
                    on("m", "t"),
                    on("m", "s"),
                );
                cdc = self.write_changes(context, &changes, &schema).await?;
            }
        }
        let upserts = format!(
            "SELECT {source_columns} FROM __inlet_src s LEFT JOIN __inlet_matched m ON {} WHERE (m.{OP_COLUMN} IS NULL AND NOT s.{DELETE_COLUMN}) OR m.{OP_COLUMN} = 'update'",
            on("m", "s"),
        );
        let (upserted, upsert_adds) = self.write_sql(context, &upserts, &schema).await?;
        adds.extend(upsert_adds);
        debug!(table = %self.table, elapsed_ms = started.elapsed().as_millis() as u64, "merge upserts written");
        let updated = counts.get("update").copied().unwrap_or(0);
        let rows = RowCounts {
            inserted: upserted.saturating_sub(updated),
            updated,
            deleted: counts.get("delete").copied().unwrap_or(0),
            unchanged: counts.get("same").copied().unwrap_or(0) + counts.get("late").copied().unwrap_or(0),
        };
        if rows.inserted == 0 && rows.updated == 0 && rows.deleted == 0 && !changed {
            return Ok(Written { rows, commit: None });
        }
        let commit = Planned {
            adds,
            removes,
            cdc,
            schema: changed.then_some(schema.clone()),
            kind: CommitKind::Merge { predicate },
        };
        Ok(Written { rows, commit: Some(commit) })
    }

    /// `__inlet_cand`: the table's rows that may match the result: with one key column, only
    /// those within the result's key range, so Delta statistics skip the other files.
    pub(crate) async fn register_candidates(&self, context: &SessionContext) -> Result<()> {
        let target = context.table("__inlet_tgt").await.map_err(|e| self.sql_error(e))?;
        let candidates = match self.config.keys.as_slice() {
            [key] => {
                let bounds =
                    self.query(context, &format!("SELECT MIN({k}), MAX({k}) FROM __inlet_src", k = quote(key))).await?;
                match bounds.iter().find(|b| b.num_rows() > 0) {
                    Some(batch) => {
                        let low = ScalarValue::try_from_array(batch.column(0), 0).map_err(|e| self.sql_error(e))?;
                        let high = ScalarValue::try_from_array(batch.column(1), 0).map_err(|e| self.sql_error(e))?;
                        let column = Expr::Column(Column::from_name(key.clone()));
                        target.filter(column.between(lit(low), lit(high))).map_err(|e| self.sql_error(e))?
                    }
                    None => target,
                }
            }
            _ => target,
        };
        context.register_table("__inlet_cand", candidates.into_view()).map_err(|e| self.sql_error(e))?;
        Ok(())
    }

    /// `scd2`: history rows with `_valid_from`, `_valid_to`, `_is_current`, `_row_hash`.
    async fn scd2(&self, context: &SessionContext, frame: DataFrame) -> Result<Written> {
        crate::scd2::write(self, context, frame, self.now_micros).await
    }

    /// The result with `__inlet_delete`, without exact duplicate rows, for writes that keep
    /// every version of a key; two different rows for one key and sequence are an error.
    pub(crate) async fn keyed_source_unique(
        &self,
        context: &SessionContext,
        frame: DataFrame,
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        let batches = frame.collect().await.map_err(|e| self.sql_error(e))?;
        let batches = self.checked(batches, schema)?;
        let result = MemTable::try_new(schema.clone(), vec![batches]).map_err(|e| self.sql_error(e))?;
        context.register_table("__inlet_result", Arc::new(result)).map_err(|e| self.sql_error(e))?;
        self.check_null_keys(context).await?;
        let mut key_and_time: Vec<String> = self.config.keys.iter().map(|k| quote(k)).collect();
        if let Some(sequence) = &self.config.sequence_by {
            key_and_time.push(quote(sequence));
        }
        let key_and_time = key_and_time.join(", ");
        // Usually one row per key and instant: then there is nothing to deduplicate.
        let extra = self.query(context, &format!(
                "SELECT (SELECT COUNT(*) FROM __inlet_result) - (SELECT COUNT(*) FROM (SELECT {key_and_time} FROM __inlet_result GROUP BY {key_and_time}))"
            )).await?;
        let delete = self.delete_flag();
        if first_count(&extra) == 0 {
            return self.query(context, &format!("SELECT *, {delete} AS {DELETE_COLUMN} FROM __inlet_result")).await;
        }
        let duplicates = self.query(context, &format!(
                "SELECT {key_and_time}, COUNT(*) AS n FROM (SELECT DISTINCT * FROM __inlet_result) GROUP BY {key_and_time} HAVING COUNT(*) > 1 LIMIT 3"
            )).await?;
        if let Some(described) = describe_rows(&duplicates) {
            return Err(self.transform_error(format!(
                "different rows for one key at one valid time ({described}); history needs one version per instant"
            )));
        }
        self.query(
            context,
            &format!("SELECT *, {delete} AS {DELETE_COLUMN} FROM (SELECT DISTINCT * FROM __inlet_result)"),
        )
        .await
    }

    /// The result's batches in `schema`, less the rows its expectations drop or quarantine.
    fn checked(&self, batches: Vec<RecordBatch>, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
        batches
            .iter()
            .map(|b| {
                let batch = conform_batch(b, schema, self.table)?;
                match &self.checks {
                    Some(checks) => checks.keep(&batch),
                    None => Ok(batch),
                }
            })
            .collect()
    }

    async fn check_null_keys(&self, context: &SessionContext) -> Result<()> {
        let null_keys: Vec<String> = self.config.keys.iter().map(|k| format!("{} IS NULL", quote(k))).collect();
        let nulls = self
            .query(context, &format!("SELECT COUNT(*) FROM __inlet_result WHERE {}", null_keys.join(" OR ")))
            .await?;
        let null_count = first_count(&nulls);
        if null_count > 0 {
            return Err(self.transform_error(format!(
                "{null_count} result rows have a NULL in key {:?}; filter them out in the query",
                self.config.keys
            )));
        }
        Ok(())
    }

    /// Runs `sql` and writes its result in `schema`, one writer per output partition of the
    /// plan, in parallel; returns the row count and the staged files.
    pub(crate) async fn write_sql(
        &self,
        context: &SessionContext,
        sql: &str,
        schema: &SchemaRef,
    ) -> Result<(u64, Vec<deltalake::kernel::Add>)> {
        let frame = context.sql(sql).await.map_err(|e| self.sql_error(e))?;
        self.write_frame(frame, schema).await
    }

    /// Writes a frame's result in `schema`, one writer per output partition, in parallel.
    pub(crate) async fn write_frame(
        &self,
        frame: DataFrame,
        schema: &SchemaRef,
    ) -> Result<(u64, Vec<deltalake::kernel::Add>)> {
        self.write_frame_with(frame, schema, self.target.writer_factory(&self.config.partition_by), None).await
    }

    /// Writes change data rows (the table's columns plus `_change_type`) as `cdc` files.
    pub(crate) async fn write_changes(
        &self,
        context: &SessionContext,
        sql: &str,
        schema: &SchemaRef,
    ) -> Result<Vec<deltalake::kernel::AddCDCFile>> {
        let frame = context.sql(sql).await.map_err(|e| self.sql_error(e))?;
        let factory = self.target.change_writer_factory(&self.config.partition_by);
        let (_, staged) = self.write_frame_with(frame, &change_schema(schema), factory, None).await?;
        Ok(crate::table::change_files(staged))
    }

    async fn write_frame_with(
        &self,
        frame: DataFrame,
        schema: &SchemaRef,
        factory: crate::table::WriterFactory,
        checks: Option<Arc<crate::expect::Checks>>,
    ) -> Result<(u64, Vec<deltalake::kernel::Add>)> {
        let streams = frame.execute_stream_partitioned().await.map_err(|e| self.sql_error(e))?;
        let mut tasks = tokio::task::JoinSet::new();
        for mut stream in streams {
            let mut writer = factory.writer(schema.clone());
            let schema = schema.clone();
            let table = self.table.to_owned();
            let checks = checks.clone();
            tasks.spawn(async move {
                let mut rows = 0u64;
                while let Some(batch) = stream.next().await {
                    let written = match batch {
                        Ok(batch) => match conform_batch(&batch, &schema, &table).and_then(|batch| match &checks {
                            Some(checks) => checks.keep(&batch),
                            None => Ok(batch),
                        }) {
                            Ok(batch) => writer.write(&batch).await.map(|()| batch.num_rows() as u64),
                            Err(err) => Err(err),
                        },
                        Err(source) => Err(EngineError::sql(table.clone(), source)),
                    };
                    match written {
                        Ok(n) => rows += n,
                        Err(err) => {
                            writer.abort().await;
                            return Err(err);
                        }
                    }
                }
                Ok((rows, writer.close().await?))
            });
        }
        let mut rows = 0;
        let mut adds = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (n, staged) =
                joined.map_err(|e| EngineError::Internal(format!("writer task of `{}` failed: {e}", self.table)))??;
            rows += n;
            adds.extend(staged);
        }
        Ok((rows, adds))
    }

    /// Runs a query and collects its result.
    pub(crate) async fn query(&self, context: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
        context.sql(sql).await.map_err(|e| self.sql_error(e))?.collect().await.map_err(|e| self.sql_error(e))
    }

    /// `delete_when` as a boolean SQL expression (false without it).
    fn delete_flag(&self) -> String {
        match &self.config.delete_when {
            Some(condition) => format!("COALESCE(({}), false)", condition.get_ref()),
            None => "false".to_owned(),
        }
    }

    /// The first column of a query's result, as strings.
    pub(crate) async fn strings(&self, context: &SessionContext, sql: &str) -> Result<Vec<String>> {
        let batches = self.query(context, sql).await?;
        let mut out = Vec::new();
        for batch in &batches {
            let column = arrow::compute::cast(batch.column(0), &DataType::Utf8)
                .map_err(|e| EngineError::arrow("reading a string column", e))?;
            let Some(values) = column.as_any().downcast_ref::<StringArray>() else {
                continue;
            };
            out.extend(values.iter().flatten().map(str::to_owned));
        }
        Ok(out)
    }
}

/// Remove actions for the files named by a scan's file column.
pub(crate) fn removes_for(
    target: &Table,
    files: &[ActiveFile],
    touched: &[String],
) -> Result<Vec<deltalake::kernel::Remove>> {
    touched
        .iter()
        .map(|url| {
            let path = target.file_path_of(url);
            files.iter().find(|f| f.path == path).map(|f| f.remove.clone()).ok_or_else(|| {
                EngineError::Internal(format!("`{}`: scanned file `{url}` is not in the table", target.name))
            })
        })
        .collect()
}

fn sorted(values: &HashMap<String, Option<String>>) -> Vec<(String, Option<String>)> {
    let mut pairs: Vec<(String, Option<String>)> = values.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    pairs.sort();
    pairs
}

/// The query result restricted to one window: `WHERE <column> = <day>`, the day cast to
/// the column's type (DataFusion pushes the filter down into the query).
fn window_filter(frame: DataFrame, window: &Window) -> std::result::Result<DataFrame, DataFusionError> {
    let field = frame.schema().as_arrow().field_with_name(&window.column)?.clone();
    let value = deltalake::datafusion::logical_expr::cast(lit(window.value.clone()), field.data_type().clone());
    frame.filter(deltalake::datafusion::prelude::ident(&window.column).eq(value))
}

/// Which partition column windows a `replace_partitions` table: its one date partition
/// column, else its one text partition column (holding `YYYY-MM-DD`).
pub fn window_column(schema: &Schema, partition_by: &[String]) -> std::result::Result<String, String> {
    let typed = |wanted: fn(&DataType) -> bool| -> Vec<&String> {
        partition_by.iter().filter(|c| schema.field_with_name(c).is_ok_and(|f| wanted(f.data_type()))).collect()
    };
    let dates = typed(|t| matches!(t, DataType::Date32 | DataType::Date64));
    let texts = typed(|t| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View));
    match (dates.as_slice(), texts.as_slice()) {
        ([one], _) | ([], [one]) => Ok((*one).clone()),
        ([], []) => Err(format!(
            "backfill windows are days of a date (or `YYYY-MM-DD` text) partition column, and none of {partition_by:?} is one"
        )),
        (many, _) if many.len() > 1 => {
            Err(format!("backfill cannot tell which date partition column of {many:?} is the day"))
        }
        (_, many) => Err(format!("backfill cannot tell which text partition column of {many:?} holds the day")),
    }
}

/// `a = 'x' AND b IS NULL OR ...`: the partitions a commit replaces, for the log.
fn partition_predicate(partitions: &BTreeSet<Vec<(String, Option<String>)>>) -> String {
    partitions
        .iter()
        .map(|values| {
            values
                .iter()
                .map(|(column, value)| match value {
                    Some(v) => format!("{} = '{}'", quote(column), v.replace('\'', "''")),
                    None => format!("{} IS NULL", quote(column)),
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        })
        .map(|p| format!("({p})"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The columns of change data files: the table's plus `_change_type`.
pub(crate) fn change_schema(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(CHANGE_TYPE, DataType::Utf8, true)));
    Arc::new(Schema::new(fields))
}

fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields().iter().zip(b.fields()).all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// A batch in `schema`: columns by name, cast to the table's types, missing ones null.
pub(crate) fn conform_batch(batch: &RecordBatch, schema: &SchemaRef, table: &str) -> Result<RecordBatch> {
    let options = CastOptions { safe: false, ..Default::default() };
    let rows = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
            Some(column) => {
                cast_with_options(column, field.data_type(), &options).map_err(|e| EngineError::Transform {
                    table: table.to_owned(),
                    message: format!(
                        "column `{}` of the result ({}) does not fit the table's {}: {e}",
                        field.name(),
                        column.data_type(),
                        field.data_type()
                    ),
                })
            }
            None => Ok(new_null_array(field.data_type(), rows)),
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| EngineError::arrow("conforming a result batch", e))
}

fn first_count(batches: &[RecordBatch]) -> i64 {
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().map(|a| a.value(0)))
        .unwrap_or(0)
}

pub(crate) fn op_counts(batches: &[RecordBatch]) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for batch in batches {
        let (Some(ops), Some(n)) = (
            arrow::compute::cast(batch.column(0), &DataType::Utf8).ok(),
            batch.column(1).as_any().downcast_ref::<arrow::array::Int64Array>(),
        ) else {
            continue;
        };
        let Some(ops) = ops.as_any().downcast_ref::<StringArray>() else {
            continue;
        };
        for i in 0..batch.num_rows() {
            *counts.entry(ops.value(i).to_owned()).or_insert(0) += u64::try_from(n.value(i)).unwrap_or(0);
        }
    }
    counts
}

/// `k=1 (2 rows), ...` for error messages.
fn describe_rows(batches: &[RecordBatch]) -> Option<String> {
    let options = arrow::util::display::FormatOptions::default();
    let mut rows = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .filter_map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options).ok())
            .collect();
        for row in 0..batch.num_rows() {
            let last = formatters.len().saturating_sub(1);
            let key: Vec<String> = formatters[..last]
                .iter()
                .enumerate()
                .map(|(i, f)| format!("{}={}", schema.field(i).name(), f.value(row)))
                .collect();
            let count = formatters.get(last).map(|f| f.value(row).to_string()).unwrap_or_default();
            rows.push(format!("{} ({count} rows)", key.join(", ")));
        }
    }
    (!rows.is_empty()).then(|| rows.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_column_is_the_one_date_or_text_partition_column() {
        let schema = Schema::new(vec![
            Field::new("country", DataType::Utf8, true),
            Field::new("day", DataType::Date32, true),
            Field::new("n", DataType::Int64, true),
        ]);
        let pick =
            |columns: &[&str]| window_column(&schema, &columns.iter().map(|c| c.to_string()).collect::<Vec<_>>());
        assert_eq!(pick(&["country", "day"]).unwrap(), "day");
        assert_eq!(pick(&["country"]).unwrap(), "country");
        assert!(pick(&["n"]).unwrap_err().contains("none of"));
        let texts = Schema::new(vec![Field::new("a", DataType::Utf8, true), Field::new("b", DataType::Utf8, true)]);
        let err = window_column(&texts, &["a".to_owned(), "b".to_owned()]).unwrap_err();
        assert!(err.contains("cannot tell"), "{err}");
    }

    #[test]
    fn partition_predicates_quote() {
        let partitions =
            BTreeSet::from([vec![("day".to_owned(), Some("2024-01-01".to_owned()))], vec![("day".to_owned(), None)]]);
        assert_eq!(partition_predicate(&partitions), "(\"day\" IS NULL) OR (\"day\" = '2024-01-01')");
    }
}
