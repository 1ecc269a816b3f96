//! `inlet run`: every source of a pipeline, landed in its bronze table exactly once.
//!
//! For each source: load the ledger from the table, list the source, keep the files that are
//! new (or changed, with `allow_overwrites`), and ingest them in commit groups bounded by
//! `max_files_per_commit` and `max_bytes_per_commit`. Files of a group are decoded and
//! staged in parallel, one Parquet writer per file, so a file that fails half-way takes
//! nothing with it. A group is published in two commits:
//!
//! 1. the quarantine table, when the group has bad records: its rows plus the `txn` of the
//!    source (version `t + 1`) and the group's file list (the intent);
//! 2. the data table: its rows, the evolved schema, the `txn` (`t + 1`) and the ledger.
//!
//! The data commit is the one that counts. After a crash between the two, the next run
//! finds the quarantine `txn` ahead of the data `txn`, redoes exactly the intent's files and
//! skips the quarantine commit that is already there, so no record is doubled or lost.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::SchemaRef;
use deltalake::kernel::Add;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use url::Url;

use crate::config::{FilesSource, PipelineConfig, SourceConfig, TableName};
use crate::conform::{ChunkOrigin, ConformSpec, Conformed, TableColumns, conform};
use crate::dag::Dag;
use crate::error::{EngineError, ErrorKind, Result};
use crate::ledger::{COMMIT_INFO_KEY, CommitLedger, FileStatus, Ledger, LedgerEntry};
use crate::schema::{ColumnType, quarantine_schema};
use crate::source::{BadRecord, FileError, Format, Source, SourceFile};
use crate::table::{Commit, CommitKind, Table, WriterFactory, lake_url, table_url};
use crate::transform::{self, TableReport, TableStatus};

/// Key of the intent (file list) in a quarantine commit's `commitInfo`.
const INTENT_KEY: &str = "inlet_intent";

/// Builds sources and formats from config; implemented by `inlet-connectors`.
pub trait Connectors: Send + Sync {
    /// The source of `config`, rooted at `root` (already resolved against the pipeline file).
    fn files_source(&self, name: &str, config: &FilesSource, base_dir: &Path) -> Result<Arc<dyn Source>>;
    /// The format of `config`.
    fn files_format(&self, config: &FilesSource) -> Result<Arc<dyn Format>>;
}

/// Told about progress while a run goes on (progress bars, logs).
pub trait RunObserver: Send + Sync {
    /// A source has `files` files (`bytes` in all) to ingest.
    fn source_planned(&self, _source: &str, _files: usize, _bytes: u64) {}
    /// One file is decoded and staged.
    fn file_staged(&self, _source: &str, _file: &str, _bytes: u64) {}
    /// A source is done.
    fn source_done(&self, _report: &SourceReport) {}
    /// A derived table is done (committed, up to date, skipped or failed).
    fn table_done(&self, _report: &TableReport) {}
}

/// Observes nothing.
pub struct Quiet;
impl RunObserver for Quiet {}

/// A pipeline ready to run: config plus where it lives.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub config: PipelineConfig,
    /// Directory of the pipeline file; relative paths are resolved against it.
    pub base_dir: PathBuf,
    pub lake: Url,
    /// The table graph (reads the `sql_file`s).
    pub dag: Dag,
}

impl Pipeline {
    pub fn new(config: PipelineConfig, base_dir: PathBuf) -> Result<Pipeline> {
        let lake = lake_url(&base_dir, &config.pipeline.lake)?;
        let dag = Dag::load(&config, &base_dir)?;
        Ok(Pipeline { config, base_dir, lake, dag })
    }

    /// The source whose target is `table`.
    pub fn source_for_table(&self, table: &str) -> Option<(&String, &SourceConfig)> {
        self.config.sources.iter().find(|(_, s)| s.target() == table)
    }
}

/// The Delta `txn` application id of a source.
pub fn app_id(source: &str) -> String {
    format!("inlet.{source}")
}

/// Tuning knobs that are not part of the pipeline file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Only these sources; all when empty.
    pub sources: Vec<String>,
    /// Only these tables (dbt-style selectors: `t`, `t+`, `+t`); all when empty.
    pub select: Vec<String>,
    /// Derived tables run at once; 0 means one per CPU core.
    pub jobs: usize,
    /// Records per decoded chunk.
    pub rows_per_chunk: usize,
    /// Leave files modified within their source's `debounce_ms` for a later run (they may
    /// still be being written): what `inlet serve` does.
    pub settle: bool,
    /// Record sources and tables that found nothing to do in the run history too (`inlet
    /// run`); `inlet serve`, which looks often, records only what did something or failed.
    pub record_idle: bool,
    /// Take everything available now (`inlet run`): a source that listed a slice of what it
    /// has (a notification queue) lists again after its commits, for as long as it has more
    /// and ingests something. `inlet serve` looks again at its next poll instead.
    pub drain: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            sources: Vec::new(),
            select: Vec::new(),
            jobs: 0,
            rows_per_chunk: 16_384,
            settle: false,
            record_idle: true,
            drain: true,
        }
    }
}

/// What a run did: the truth tests and `--output json` rely on.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub pipeline: String,
    pub load_id: String,
    /// When the run started, RFC 3339 UTC.
    pub started_at: String,
    pub duration_secs: f64,
    pub sources: Vec<SourceReport>,
    /// Derived tables, in the order they finished.
    pub tables: Vec<TableReport>,
}

impl RunReport {
    /// The most serious error kind of any source or table, if any failed.
    pub fn worst_error(&self) -> Option<ErrorKind> {
        let kinds = self
            .sources
            .iter()
            .filter_map(|s| s.error.as_ref().map(|e| e.kind))
            .chain(self.tables.iter().filter_map(|t| t.error.as_ref().map(|e| e.kind)));
        kinds.max_by_key(|k| match k {
            ErrorKind::User => 1,
            ErrorKind::External => 2,
            ErrorKind::Internal => 3,
        })
    }

    /// Whether some file could not be read (it is retried next run).
    pub fn has_failed_files(&self) -> bool {
        self.sources.iter().any(|s| !s.failed_files.is_empty())
    }
}

/// What a run did for one source.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SourceReport {
    pub source: String,
    pub table: String,
    pub table_url: String,
    /// Files found by listing.
    pub files_listed: usize,
    /// Files ingested by this run.
    pub files_ingested: usize,
    /// Of those, files ingested again because they changed (`allow_overwrites`).
    pub files_reingested: usize,
    /// Files that changed after ingestion and were not ingested again.
    pub changed_files: Vec<ChangedFile>,
    /// Files that could not be read; they are retried next run.
    pub failed_files: Vec<FailedFile>,
    /// Files left for a later run because they changed within `debounce_ms` (`settle`).
    pub files_unsettled: usize,
    pub rows: u64,
    pub quarantined: u64,
    /// Input bytes of the ingested files, as stored.
    pub bytes: u64,
    pub commits: Vec<CommitReport>,
    /// Latest version of the table after the run.
    pub table_version: Option<i64>,
    pub quarantine_version: Option<i64>,
    /// Columns added to the table by this run.
    pub added_columns: Vec<String>,
    /// When the source started, microseconds since the epoch (UTC).
    /// Commit races lost to another writer and planned again.
    pub conflicts: u32,
    pub started_micros: i64,
    pub seconds: f64,
    /// Why the source stopped, if it did.
    pub error: Option<ReportedError>,
    /// The expectations' outcome when the gate failed (a passed gate is in each commit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_gate: Option<inlet_quality::GateReport>,
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

#[derive(Debug, Clone, Serialize)]
pub struct FailedFile {
    pub path: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommitReport {
    pub table_version: i64,
    pub txn_version: i64,
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

/// Tells the source that `files` are in the table. A cleanup that fails leaves the file;
/// the next run finds it in the ledger and tries again.
fn release(source: &dyn Source, name: &str, files: &[SourceFile]) {
    if files.is_empty() {
        return;
    }
    if let Err(err) = source.done(files) {
        warn!(source = %name, error = %err, "cleaning up ingested files failed; retried next run");
    }
}

/// How often a source that lost a commit race to another writer plans again in one run.
const CONFLICT_RETRIES: u32 = 8;

/// A random wait before planning again, growing with the attempt (writers that collided
/// should not collide again).
fn conflict_backoff(attempt: u32) -> std::time::Duration {
    let ceiling_ms = 50u64 << attempt.min(6);
    std::time::Duration::from_millis(rand::random_range(ceiling_ms / 4..=ceiling_ms))
}

/// Runs every source (or those in `options.sources`); a failing source does not stop the others.
pub async fn run(
    pipeline: &Pipeline,
    connectors: &dyn Connectors,
    observer: Arc<dyn RunObserver>,
    options: &RunOptions,
) -> Result<RunReport> {
    for wanted in &options.sources {
        if !pipeline.config.sources.contains_key(wanted) {
            return Err(EngineError::Config {
                path: pipeline.base_dir.join("inlet.toml"),
                message: format!("no source named `{wanted}`"),
            });
        }
    }
    let selected = pipeline.dag.select(&options.select).map_err(|message| EngineError::Config {
        path: pipeline.base_dir.join("inlet.toml"),
        message: format!("--select {message}"),
    })?;
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let load_id = uuid::Uuid::now_v7().to_string();
    let context = RunContext {
        load_id: load_id.clone(),
        ingested_at_micros: started_at.timestamp_micros(),
        parallel_files: match pipeline.config.pipeline.max_parallel_files {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        },
        rows_per_chunk: options.rows_per_chunk.max(1),
        settle: options.settle,
    };
    let jobs = match options.jobs {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    // Sources run side by side, `jobs` at a time; each stops on its own errors. Those with a
    // `relationships` check run after the others, so what they check against does not
    // depend on timing.
    let (checking, plain): (Vec<_>, Vec<_>) = pipeline
        .config
        .sources
        .iter()
        .filter(|(name, source)| {
            (options.sources.is_empty() || options.sources.contains(name)) && selected.contains(source.target())
        })
        .partition(|(_, source)| {
            source.expect.iter().any(|e| matches!(e.kind(), Ok(inlet_quality::Kind::Relationships { .. })))
        });
    let observer_ref = observer.as_ref();
    let context_ref = &context;
    let drain = options.drain;
    let mut reports: Vec<SourceReport> = Vec::new();
    for phase in [plain, checking] {
        let done: Vec<SourceReport> = futures::stream::iter(phase)
            .map(|(name, files)| async move {
                let began = Instant::now();
                let mut report = SourceReport {
                    source: name.clone(),
                    table: files.target.get_ref().clone(),
                    started_micros: chrono::Utc::now().timestamp_micros(),
                    ..Default::default()
                };
                let mut attempt = 0;
                let mut passes = 1;
                let outcome = loop {
                    // What this pass adds to the report, undone if it loses a commit race.
                    let mark = (
                        report.files_listed,
                        report.files_unsettled,
                        report.failed_files.len(),
                        report.changed_files.len(),
                    );
                    let outcome =
                        run_files_source(pipeline, connectors, observer_ref, context_ref, name, files, &mut report)
                            .await;
                    match outcome {
                        Ok(More::Yes) if drain && passes < DRAIN_PASSES => {
                            passes += 1;
                            debug!(source = %name, passes, "the source has more; listing again");
                        }
                        Ok(More::Yes) if drain => {
                            info!(source = %name, passes, "the source still has more; the next run takes it");
                            break Ok(());
                        }
                        Ok(_) => break Ok(()),
                        // Another writer committed first (the same source in another process,
                        // or the table's creation): list again and redo what is still new;
                        // the ledger decides, so nothing is ingested twice.
                        Err(err) if err.is_conflict() && attempt < CONFLICT_RETRIES => {
                            attempt += 1;
                            info!(source = %name, attempt, error = %err, "lost a commit race; planning again");
                            report.conflicts += 1;
                            report.files_listed = mark.0;
                            report.files_unsettled = mark.1;
                            report.failed_files.truncate(mark.2);
                            report.changed_files.truncate(mark.3);
                            tokio::time::sleep(conflict_backoff(attempt)).await;
                        }
                        Err(err) => break Err(err),
                    }
                };
                if let Err(err) = outcome {
                    warn!(source = %name, error = %err, "source stopped");
                    report.error = Some(ReportedError::from(&err));
                    if let EngineError::GateFailed { report: quality, .. } = &err {
                        report.failed_gate = Some(quality.as_ref().clone());
                    }
                }
                report.seconds = began.elapsed().as_secs_f64();
                observer_ref.source_done(&report);
                report
            })
            .buffer_unordered(jobs.max(1))
            .collect()
            .await;
        reports.extend(done);
    }
    reports.sort_by(|a, b| a.source.cmp(&b.source));
    // `--source` alone runs sources only; otherwise the selected tables follow.
    let tables = if options.sources.is_empty() || !options.select.is_empty() {
        // A source that stopped (a failed gate, storage) fails the tables over its target.
        let failed: BTreeSet<String> = reports
            .iter()
            .filter(|r| r.error.is_some())
            .flat_map(|r| {
                let quarantine = TableName::parse(&r.table).map(|t| t.quarantine().to_string());
                std::iter::once(r.table.clone()).chain(quarantine)
            })
            .collect();
        run_tables(pipeline, &selected, &failed, jobs, &load_id, observer.as_ref()).await
    } else {
        Vec::new()
    };
    let report = RunReport {
        pipeline: pipeline.config.pipeline.name.clone(),
        load_id,
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        duration_secs: started.elapsed().as_secs_f64(),
        sources: reports,
        tables,
    };
    // The run history mirrors what the commits say; losing a row loses no data.
    if let Err(err) = crate::audit::record_run(&pipeline.lake, &report, options.record_idle).await {
        warn!(error = %err, "run history not written");
    }
    Ok(report)
}

/// Runs the selected derived tables in DAG order, `jobs` at a time. A table starts when
/// every derived table it reads has finished; when one of those failed, it is skipped.
async fn run_tables(
    pipeline: &Pipeline,
    selected: &BTreeSet<String>,
    failed_sources: &BTreeSet<String>,
    jobs: usize,
    run_id: &str,
    observer: &dyn RunObserver,
) -> Vec<TableReport> {
    let order: Vec<String> = pipeline.dag.order().iter().filter(|t| selected.contains(*t)).cloned().collect();
    let derived: BTreeSet<&String> = order.iter().collect();
    let shared = Arc::new(pipeline.clone());
    let mut finished: HashMap<String, bool> = failed_sources.iter().map(|t| (t.clone(), false)).collect();
    let mut pending: Vec<String> = order.clone();
    let mut running = JoinSet::new();
    // Which table each task runs, so a task that panics still names its table.
    let mut task_tables: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut reports = Vec::new();
    while !pending.is_empty() || !running.is_empty() {
        let mut index = 0;
        while index < pending.len() {
            let table = &pending[index];
            let inputs: Vec<&String> =
                pipeline.dag.depends_on(table).filter(|u| derived.contains(u) || failed_sources.contains(*u)).collect();
            if inputs.iter().any(|u| !finished.contains_key(*u)) {
                index += 1;
                continue;
            }
            if let Some(failed) = inputs.iter().find(|u| finished.get(**u) == Some(&false)) {
                let write = pipeline.config.tables.get(table).map(|t| t.write).unwrap_or_default();
                let mut report = TableReport::new(table, write);
                report.reason = Some(format!("upstream `{failed}` failed"));
                finished.insert(table.clone(), false);
                observer.table_done(&report);
                reports.push(report);
                pending.remove(index);
                continue;
            }
            if running.len() >= jobs.max(1) {
                break;
            }
            let table = pending.remove(index);
            let pipeline = shared.clone();
            let run_id = run_id.to_owned();
            let name = table.clone();
            let handle = running.spawn(async move {
                let write = pipeline.config.tables.get(&table).map(|t| t.write).unwrap_or_default();
                let began = Instant::now();
                let started_micros = chrono::Utc::now().timestamp_micros();
                match transform::run_table(&pipeline, &pipeline.dag, &table, &run_id).await {
                    Ok(report) => report,
                    Err(err) => {
                        warn!(table = %table, error = %err, "table failed");
                        let mut report = TableReport::new(&table, write);
                        report.status = TableStatus::Failed;
                        report.started_micros = started_micros;
                        report.error = Some(ReportedError::from(&err));
                        if let EngineError::GateFailed { report: quality, .. } = &err {
                            report.quality = Some(quality.as_ref().clone());
                        }
                        report.seconds = began.elapsed().as_secs_f64();
                        report
                    }
                }
            });
            task_tables.insert(handle.id(), name);
        }
        let Some(joined) = running.join_next_with_id().await else {
            if !pending.is_empty() {
                // Unreachable while every finished task is recorded; never spin.
                warn!(tables = ?pending, "tables left without a runnable order");
                break;
            }
            continue;
        };
        let report = match joined {
            Ok((_, report)) => report,
            Err(err) => {
                // A panicking task is a bug; its table counts as failed so descendants skip.
                let table = task_tables.get(&err.id()).cloned().unwrap_or_default();
                let write = pipeline.config.tables.get(&table).map(|t| t.write).unwrap_or_default();
                let mut report = TableReport::new(&table, write);
                report.status = TableStatus::Failed;
                report.error = Some(ReportedError::from(&EngineError::Internal(format!("table task failed: {err}"))));
                report
            }
        };
        let ok = matches!(report.status, TableStatus::Committed | TableStatus::UpToDate)
            || (report.status == TableStatus::Skipped && report.error.is_none());
        finished.insert(report.table.clone(), ok && report.status != TableStatus::Failed);
        observer.table_done(&report);
        reports.push(report);
    }
    reports
}

struct RunContext {
    load_id: String,
    ingested_at_micros: i64,
    parallel_files: usize,
    rows_per_chunk: usize,
    settle: bool,
}

/// Listings of one source in one run, at most (a queue fed faster than it is read must
/// not keep `inlet run` going for ever).
const DRAIN_PASSES: u32 = 1000;

/// Whether a source would list more units right away.
enum More {
    Yes,
    No,
}

/// One pass over a source: list, plan, stage and commit what is new.
async fn run_files_source(
    pipeline: &Pipeline,
    connectors: &dyn Connectors,
    observer: &dyn RunObserver,
    context: &RunContext,
    name: &str,
    config: &FilesSource,
    report: &mut SourceReport,
) -> Result<More> {
    let target = TableName::parse(config.target.get_ref())
        .ok_or_else(|| EngineError::Internal(format!("unvalidated target `{}`", config.target.get_ref())))?;
    let url = table_url(&pipeline.lake, &target)?;
    report.table_url = url.to_string();
    let mut table = Table::open(&target.to_string(), url).await?;
    let mut quarantine =
        Table::open(&target.quarantine().to_string(), table_url(&pipeline.lake, &target.quarantine())?).await?;
    // Also what a source that stops early reports.
    report.table_version = table.version();
    report.quarantine_version = quarantine.version();
    let app_id = app_id(name);
    let mut ledger = Ledger::load(&table, &app_id).await?;
    let loaded_txn = ledger.txn_version;

    let source = connectors.files_source(name, config, &pipeline.base_dir)?;
    let format = connectors.files_format(config)?;
    let listed = source.list().map_err(|e| EngineError::ListSource {
        source_name: name.to_owned(),
        path: config.path.clone(),
        message: e.message,
    })?;
    report.files_listed += listed.len();

    let mut pending = Vec::new();
    // Files the ledger holds already: told to the source (a cleanup a crash cut short).
    let mut already = Vec::new();
    let mut passed_over = Vec::new();
    let settled_before = context.ingested_at_micros - i64::try_from(config.debounce_ms).unwrap_or(0) * 1000;
    for file in listed {
        if context.settle && !source.atomic() && file.modified_micros > settled_before {
            report.files_unsettled += 1;
            continue;
        }
        match ledger.status(&file) {
            FileStatus::New => pending.push((file, false)),
            FileStatus::Ingested => already.push(file),
            FileStatus::Changed { .. } if config.allow_overwrites => pending.push((file, true)),
            FileStatus::Changed { previous } => {
                warn!(source = %name, file = %file.path, "file changed after it was ingested; set allow_overwrites to ingest it again");
                passed_over.push(file.clone());
                report.changed_files.push(ChangedFile {
                    path: file.path.clone(),
                    size_bytes: file.size_bytes,
                    modified_micros: file.modified_micros,
                    previous_size_bytes: previous.size_bytes,
                    previous_modified_micros: previous.modified_micros,
                    etag: file.etag.clone(),
                    previous_etag: previous.etag.clone(),
                    previous_load_id: previous.load_id,
                });
            }
        }
    }

    release(source.as_ref(), name, &already);
    if !passed_over.is_empty()
        && let Err(err) = source.passed_over(&passed_over)
    {
        warn!(source = %name, error = %err, "letting go of changed files failed");
    }

    // A quarantine commit ahead of the data commit is an unfinished group: redo it first.
    let intent = pending_intent(&quarantine, &app_id, ledger.txn_version).await?;
    let mut groups = Vec::new();
    if let Some(intent) = &intent {
        // A source listing a slice (a queue) may not hold all of them now: look at everything.
        let missing: BTreeSet<&str> =
            intent.iter().map(String::as_str).filter(|path| !pending.iter().any(|(f, _)| f.path == *path)).collect();
        if !missing.is_empty() {
            let everything = source.list_all().map_err(|e| EngineError::ListSource {
                source_name: name.to_owned(),
                path: config.path.clone(),
                message: e.message,
            })?;
            for file in everything {
                if missing.contains(file.path.as_str()) && ledger.status(&file) == FileStatus::New {
                    pending.push((file, false));
                }
            }
        }
        let (first, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(f, _)| intent.contains(&f.path));
        info!(source = %name, files = first.len(), "finishing an interrupted commit");
        if !first.is_empty() {
            groups.push(first);
        }
        pending = rest;
    }
    groups.extend(commit_groups(pending, config.max_files_per_commit, config.max_bytes_per_commit));
    observer.source_planned(
        name,
        groups.iter().map(Vec::len).sum(),
        groups.iter().flatten().map(|(f, _)| f.size_bytes).sum(),
    );

    let spec = Arc::new(conform_spec(name, config, &target.to_string()));
    let columns = Arc::new(Mutex::new(match table.arrow_schema()? {
        Some(schema) => TableColumns::existing(&schema, config.on_new_columns),
        None => TableColumns::new_table(config.on_new_columns),
    }));

    let sample_columns = vec![crate::schema::SOURCE_FILE.to_owned(), crate::schema::SOURCE_ROW.to_owned()];
    // Which repeat of a key `unique` removes depends on the order rows are seen: files are
    // staged one at a time then, so a group redone after a crash decides the same way.
    let ordered = config.expect.iter().any(|e| {
        e.check == Some(inlet_quality::Check::Unique)
            && matches!(e.on_violation, inlet_quality::Action::Drop | inlet_quality::Action::Quarantine)
    });
    let parallel = if ordered { 1 } else { context.parallel_files };
    for group in groups {
        let txn_version = ledger.txn_version + 1;
        let checks =
            crate::expect::checks_for(&target.to_string(), &config.expect, sample_columns.clone(), &pipeline.lake)
                .await?;
        let jobs = FileJob {
            checks: checks.clone(),
            source: source.clone(),
            format: format.clone(),
            spec: spec.clone(),
            columns: columns.clone(),
            data: table.writer_factory(&[]),
            quarantine: quarantine.writer_factory(&[]),
            load_id: context.load_id.clone(),
            ingested_at_micros: context.ingested_at_micros,
            rows_per_chunk: context.rows_per_chunk,
        };
        let (outcomes, shared) = stage_group(jobs, &group, parallel, name, observer).await?;

        let mut data_adds = shared.data;
        let mut quarantine_adds = shared.quarantine;
        let mut entries = Vec::new();
        let mut committed = Vec::new();
        let mut stop: Option<EngineError> = None;
        for ((file, overwrite), outcome) in group.iter().zip(outcomes) {
            match outcome {
                Staged::Done(staged) => {
                    data_adds.extend(staged.data_adds);
                    quarantine_adds.extend(staged.quarantine_adds);
                    report.files_reingested += usize::from(*overwrite);
                    committed.push(file.clone());
                    entries.push(LedgerEntry {
                        path: file.path.clone(),
                        size_bytes: file.size_bytes,
                        modified_micros: file.modified_micros,
                        etag: file.etag.clone(),
                        rows: staged.rows,
                        quarantined: staged.quarantined,
                        load_id: context.load_id.clone(),
                        txn_version,
                        table_version: 0,
                        ingested_at_micros: context.ingested_at_micros,
                    });
                }
                Staged::Unreadable(message) => {
                    warn!(source = %name, file = %file.path, error = %message, "file not ingested");
                    report.failed_files.push(FailedFile { path: file.path.clone(), error: message });
                }
                Staged::Stop(err) => {
                    stop.get_or_insert(err);
                }
            }
        }
        if let Some(err) = stop {
            return Err(err);
        }
        if entries.is_empty() {
            continue;
        }
        // A failed gate commits nothing: the files stay un-ingested, the staged ones orphans.
        let quality = match &checks {
            Some(checks) => Some(checks.verdict(chrono::Utc::now().timestamp_micros())?),
            None => None,
        };
        let rows: u64 = entries.iter().map(|e| e.rows).sum();
        let quarantined: u64 = entries.iter().map(|e| e.quarantined).sum();
        let bytes: u64 = entries.iter().map(|e| e.size_bytes).sum();

        let mut quarantine_version = None;
        // Only the redo of an interrupted group finds its quarantine rows committed already;
        // any other group (the interrupted one's files all gone) commits its own.
        let redo = intent.as_ref().is_some_and(|files| group.iter().all(|(f, _)| files.contains(&f.path)));
        let quarantine_done = redo && quarantine.app_version(&app_id).await?.is_some_and(|v| v >= txn_version);
        if !quarantine_adds.is_empty() && !quarantine_done {
            let intent: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
            let version = quarantine
                .commit(Commit {
                    adds: quarantine_adds,
                    removes: Vec::new(),
                    cdc: Vec::new(),
                    partition_by: Vec::new(),
                    change_data_feed: false,
                    operation: CommitKind::Append,
                    schema: quarantine_schema_change(&quarantine)?,
                    app_id: app_id.clone(),
                    app_version: txn_version,
                    metadata: HashMap::from([(
                        INTENT_KEY.to_owned(),
                        serde_json::json!({ "app_id": app_id, "txn_version": txn_version, "load_id": context.load_id, "files": intent }),
                    )]),
                })
                .await?;
            quarantine_version = Some(version);
        }

        // The schema goes into the commit when the table is new or the files brought columns.
        let schema =
            columns.lock().map_err(|_| EngineError::Internal("table columns lock poisoned".into()))?.arrow_schema();
        let added = added_columns(&table, &schema)?;
        let commit_ledger =
            CommitLedger { app_id: app_id.clone(), txn_version, load_id: context.load_id.clone(), files: entries };
        let ledger_json = serde_json::to_value(&commit_ledger)
            .map_err(|e| EngineError::Internal(format!("serialising ledger: {e}")))?;
        let version = table
            .commit(Commit {
                adds: data_adds,
                removes: Vec::new(),
                cdc: Vec::new(),
                partition_by: Vec::new(),
                change_data_feed: false,
                operation: CommitKind::Append,
                schema: (!table.exists() || !added.is_empty()).then_some(schema),
                app_id: app_id.clone(),
                app_version: txn_version,
                metadata: quality_metadata(
                    HashMap::from([(COMMIT_INFO_KEY.to_owned(), ledger_json)]),
                    quality.as_ref(),
                    format!(
                        "inlet ingest {name}: {} files, {rows} rows, {quarantined} quarantined",
                        commit_ledger.files.len()
                    ),
                )?,
            })
            .await?;
        info!(source = %name, table = %target, version, txn_version, files = commit_ledger.files.len(), rows, quarantined, "committed");
        report.files_ingested += commit_ledger.files.len();
        report.rows += rows;
        report.quarantined += quarantined;
        report.bytes += bytes;
        report.commits.push(CommitReport {
            table_version: version,
            txn_version,
            files: commit_ledger.files.len(),
            rows,
            quarantined,
            quarantine_version,
            quality,
        });
        report.added_columns.extend(added);
        report.table_version = Some(version);
        report.quarantine_version = quarantine.version();
        ledger.record(&commit_ledger, version);
        release(source.as_ref(), name, &committed);
    }

    report.table_version = table.version();
    report.quarantine_version = quarantine.version();
    // Keep the snapshot current after commits and replays, so the next lookup reads no old commits.
    if table.exists() && (!ledger.snapshot_current || ledger.txn_version != loaded_txn) {
        ledger.save(&table).await?;
    }
    Ok(if source.more() { More::Yes } else { More::No })
}

/// How a source's decoded chunks are typed and checked against its table.
pub(crate) fn conform_spec(name: &str, config: &FilesSource, table: &str) -> ConformSpec {
    let hints: HashMap<String, _> = config
        .schema
        .iter()
        .filter_map(|(column, hint)| ColumnType::parse(hint.get_ref()).ok().map(|t| (column.clone(), t.0)))
        .collect();
    ConformSpec { source_name: name.to_owned(), table: table.to_owned(), hints, on_new_columns: config.on_new_columns }
}

/// The quarantine schema when the table lacks it (new, or from before `_error_rule`).
pub(crate) fn quarantine_schema_change(quarantine: &Table) -> Result<Option<SchemaRef>> {
    let wanted = quarantine_schema();
    match quarantine.arrow_schema()? {
        Some(existing) if wanted.fields().iter().all(|f| existing.field_with_name(f.name()).is_ok()) => Ok(None),
        _ => Ok(Some(wanted)),
    }
}

/// Commit metadata with the gate's report (`inlet_quality`) and a `userMetadata` line for
/// `DESCRIBE HISTORY`: `summary`, then the gate's summary.
pub(crate) fn quality_metadata(
    mut metadata: HashMap<String, serde_json::Value>,
    quality: Option<&inlet_quality::GateReport>,
    summary: String,
) -> Result<HashMap<String, serde_json::Value>> {
    let mut line = summary;
    if let Some(report) = quality {
        let json =
            serde_json::to_value(report).map_err(|e| EngineError::Internal(format!("serialising quality: {e}")))?;
        metadata.insert(QUALITY_KEY.to_owned(), json);
        line = format!("{line}; {}", report.summary());
    }
    metadata.insert("userMetadata".to_owned(), serde_json::Value::String(line));
    Ok(metadata)
}

/// The commit metadata key of the quality gate's report.
pub const QUALITY_KEY: &str = "inlet_quality";

/// Columns of `schema` the existing table lacks (none for a new table: it is created whole).
fn added_columns(table: &Table, schema: &SchemaRef) -> Result<Vec<String>> {
    let Some(current) = table.arrow_schema()? else {
        return Ok(Vec::new());
    };
    Ok(schema
        .fields()
        .iter()
        .filter(|f| current.field_with_name(f.name()).is_err())
        .map(|f| f.name().clone())
        .collect())
}

/// The files of an unfinished group: a quarantine commit whose `txn` is ahead of the data table's.
async fn pending_intent(quarantine: &Table, app_id: &str, data_txn: i64) -> Result<Option<Vec<String>>> {
    let Some(quarantine_txn) = quarantine.app_version(app_id).await? else {
        return Ok(None);
    };
    if quarantine_txn <= data_txn {
        return Ok(None);
    }
    let Some(latest) = quarantine.version() else {
        return Ok(None);
    };
    // The intent is in one of the latest commits (quarantine commits are made by this source only).
    for version in (0..=latest).rev().take(16) {
        let Some(bytes) = quarantine.commit_bytes(version).await? else {
            break;
        };
        for line in bytes.split(|&b| b == b'\n') {
            let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            let Some(intent) = action.get("commitInfo").and_then(|c| c.get(INTENT_KEY)) else {
                continue;
            };
            if intent.get("app_id").and_then(|v| v.as_str()) == Some(app_id)
                && intent.get("txn_version").and_then(serde_json::Value::as_i64) == Some(quarantine_txn)
            {
                let files = intent
                    .get("files")
                    .and_then(|f| f.as_array())
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                return Ok(Some(files));
            }
        }
    }
    Err(EngineError::Ledger {
        table: quarantine.name.clone(),
        app_id: app_id.to_owned(),
        message: format!(
            "quarantine `txn` {quarantine_txn} is ahead of the data table's {data_txn} but its commit cannot be found"
        ),
    })
}

/// Splits files into commit groups, in order, bounded by count and input bytes.
fn commit_groups(files: Vec<(SourceFile, bool)>, max_files: usize, max_bytes: u64) -> Vec<Vec<(SourceFile, bool)>> {
    let mut groups = Vec::new();
    let mut current: Vec<(SourceFile, bool)> = Vec::new();
    let mut bytes = 0u64;
    for file in files {
        if !current.is_empty() && (current.len() >= max_files || bytes.saturating_add(file.0.size_bytes) > max_bytes) {
            groups.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes = bytes.saturating_add(file.0.size_bytes);
        current.push(file);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// Everything a file's ingestion needs, shared by the files of a group.
#[derive(Clone)]
struct FileJob {
    source: Arc<dyn Source>,
    format: Arc<dyn Format>,
    spec: Arc<ConformSpec>,
    columns: Arc<Mutex<TableColumns>>,
    data: WriterFactory,
    quarantine: WriterFactory,
    load_id: String,
    ingested_at_micros: i64,
    rows_per_chunk: usize,
    /// The source's expectations over this commit group.
    checks: Option<Arc<crate::expect::Checks>>,
}

struct StagedFile {
    data_adds: Vec<Add>,
    /// The rows of a small file, held to be written with the group's other small files.
    held: Held,
    quarantine_adds: Vec<Add>,
    rows: u64,
    quarantined: u64,
}

/// A small file's rows and quarantine rows, held while they fit [`SMALL_FILE_ROWS_BYTES`].
#[derive(Default)]
struct Held {
    rows: Vec<RecordBatch>,
    quarantine: Vec<RecordBatch>,
    bytes: usize,
}

/// Rows of one file (Arrow memory) held to share Parquet files with other small files of
/// its commit, rather than getting files of their own: a thousand 100 KB drops make a few
/// files, not a thousand. A file that outgrows it gets files of its own.
const SMALL_FILE_ROWS_BYTES: usize = 16 * 1024 * 1024;

/// Writes `batch` with `writers`: one per schema, since files of one group can be read
/// before and after a column was added.
async fn write_shared(
    writers: &mut Vec<crate::table::FileWriter>,
    factory: &crate::table::WriterFactory,
    batch: &RecordBatch,
) -> Result<()> {
    let index = match writers.iter().position(|w| w.schema() == &batch.schema()) {
        Some(index) => index,
        None => {
            writers.push(factory.writer(batch.schema()));
            writers.len() - 1
        }
    };
    match writers.get_mut(index) {
        Some(writer) => writer.write(batch).await,
        None => Err(EngineError::Internal("a shared writer vanished".into())),
    }
}

enum Staged {
    Done(StagedFile),
    /// The file cannot be read; it stays un-ingested.
    Unreadable(String),
    /// The source must stop (e.g. new columns with `on_new_columns = "fail"`).
    Stop(EngineError),
}

/// Stages the files of a group, `parallel` at a time: outcomes in the group's order, and the
/// files staged for the small files' rows together.
async fn stage_group(
    job: FileJob,
    group: &[(SourceFile, bool)],
    parallel: usize,
    source_name: &str,
    observer: &dyn RunObserver,
) -> Result<(Vec<Staged>, SharedAdds)> {
    let mut shared = Shared::default();
    let outcomes = match stage_files(&job, group, parallel, source_name, observer, &mut shared).await {
        Ok(outcomes) => outcomes,
        Err(err) => {
            shared.abort().await;
            return Err(err);
        }
    };
    if outcomes.iter().any(|o| matches!(o, Staged::Stop(_))) {
        shared.abort().await;
        return Ok((outcomes, SharedAdds::default()));
    }
    Ok((outcomes, shared.close().await?))
}

/// The writers small files share within a group.
#[derive(Default)]
struct Shared {
    data: Vec<crate::table::FileWriter>,
    quarantine: Vec<crate::table::FileWriter>,
}

/// What the small files of a group staged through their shared writers.
#[derive(Default)]
struct SharedAdds {
    data: Vec<Add>,
    quarantine: Vec<Add>,
}

impl Shared {
    async fn abort(self) {
        abort_all(self.data.into_iter().chain(self.quarantine).collect()).await;
    }

    /// Closes every writer; after a failure, aborts the rest.
    async fn close(self) -> Result<SharedAdds> {
        let data = match close_all(self.data).await {
            Ok(adds) => adds,
            Err(err) => {
                abort_all(self.quarantine).await;
                return Err(err);
            }
        };
        Ok(SharedAdds { data, quarantine: close_all(self.quarantine).await? })
    }
}

/// Closes every writer; after a failure, aborts the rest.
async fn close_all(writers: Vec<crate::table::FileWriter>) -> Result<Vec<Add>> {
    let mut adds = Vec::new();
    let mut writers = writers.into_iter();
    while let Some(writer) = writers.next() {
        match writer.close().await {
            Ok(staged) => adds.extend(staged),
            Err(err) => {
                abort_all(writers.collect()).await;
                return Err(err);
            }
        }
    }
    Ok(adds)
}

async fn abort_all(writers: Vec<crate::table::FileWriter>) {
    for writer in writers {
        writer.abort().await;
    }
}

/// The outcomes of [`stage_group`], small files' rows written with `shared`.
async fn stage_files(
    job: &FileJob,
    group: &[(SourceFile, bool)],
    parallel: usize,
    source_name: &str,
    observer: &dyn RunObserver,
    shared: &mut Shared,
) -> Result<Vec<Staged>> {
    let mut outcomes: Vec<Option<Staged>> = (0..group.len()).map(|_| None).collect();
    let mut tasks = JoinSet::new();
    let mut next = 0;
    // A new table takes its columns from its first file, not from whichever file is first decoded.
    let establishing = job.columns.lock().map(|c| !c.established()).unwrap_or(false);
    while next < group.len() || !tasks.is_empty() {
        let limit = if establishing && outcomes.first().is_some_and(Option::is_none) { 1 } else { parallel.max(1) };
        while next < group.len() && tasks.len() < limit {
            let job = job.clone();
            let file = group[next].0.clone();
            let index = next;
            tasks.spawn(async move { (index, stage_file(job, file).await) });
            next += 1;
        }
        if let Some(joined) = tasks.join_next().await {
            let (index, staged) = joined.map_err(|e| EngineError::Internal(format!("file task failed: {e}")))?;
            let mut staged = staged?;
            if let Staged::Done(file) = &mut staged {
                let held = std::mem::take(&mut file.held);
                for batch in held.rows {
                    write_shared(&mut shared.data, &job.data, &batch).await?;
                }
                for batch in held.quarantine {
                    write_shared(&mut shared.quarantine, &job.quarantine, &batch).await?;
                }
            }
            observer.file_staged(source_name, &group[index].0.path, group[index].0.size_bytes);
            outcomes[index] = Some(staged);
        }
    }
    outcomes.into_iter().map(|o| o.ok_or_else(|| EngineError::Internal("a file task vanished".into()))).collect()
}

enum Message {
    Chunk(Conformed),
    Unreadable(FileError),
    Failed(EngineError),
}

/// Decodes and conforms a file on a blocking thread while this task stages its rows.
async fn stage_file(job: FileJob, file: SourceFile) -> Result<Staged> {
    let (tx, mut rx) = mpsc::channel::<Message>(2);
    let decode_job = job.clone();
    let decode_file = file.clone();
    let decoder = tokio::task::spawn_blocking(move || decode_file_blocking(&decode_job, &decode_file, &tx));

    let mut data: Option<crate::table::FileWriter> = None;
    let mut data_adds = Vec::new();
    // The file's rows while it is small; `None` once it has files of its own.
    let mut held: Option<Held> = Some(Held::default());
    let mut quarantine: Option<crate::table::FileWriter> = None;
    let mut rows = 0u64;
    let mut quarantined = 0u64;
    let mut outcome = None;
    while let Some(message) = rx.recv().await {
        match message {
            Message::Chunk(chunk) => {
                let mut bad = Vec::new();
                if !chunk.bad.is_empty() {
                    bad.push(quarantine_batch(&chunk.bad, &file.path, &job.load_id, job.ingested_at_micros)?);
                    quarantined += chunk.bad.len() as u64;
                }
                let mut batch = chunk.batch;
                if let Some(checks) = &job.checks
                    && batch.num_rows() > 0
                {
                    let checked = checks.apply(&batch)?;
                    if let Some((rows, rules)) = checked.quarantined {
                        let rows = crate::expect::quarantine_rows(
                            &rows,
                            &rules,
                            &file.path,
                            &job.load_id,
                            job.ingested_at_micros,
                            true,
                        )?;
                        quarantined += rows.num_rows() as u64;
                        bad.push(rows);
                    }
                    batch = checked.kept;
                }
                rows += batch.num_rows() as u64;
                let kept: Vec<RecordBatch> = (batch.num_rows() > 0).then_some(batch).into_iter().collect();
                let (batches, bad) = match held.as_mut() {
                    Some(small) => {
                        small.bytes += kept.iter().chain(&bad).map(RecordBatch::get_array_memory_size).sum::<usize>();
                        small.rows.extend(kept);
                        small.quarantine.extend(bad);
                        if small.bytes <= SMALL_FILE_ROWS_BYTES {
                            continue;
                        }
                        let small = held.take().unwrap_or_default();
                        (small.rows, small.quarantine)
                    }
                    None => (kept, bad),
                };
                for batch in bad {
                    quarantine.get_or_insert_with(|| job.quarantine.writer(quarantine_schema())).write(&batch).await?;
                }
                for batch in batches {
                    // A column was added since this file's writer started: finish it, start another.
                    if data.as_ref().is_some_and(|w| w.schema() != &batch.schema())
                        && let Some(writer) = data.take()
                    {
                        data_adds.extend(writer.close().await?);
                    }
                    data.get_or_insert_with(|| job.data.writer(batch.schema())).write(&batch).await?;
                }
            }
            Message::Unreadable(err) => {
                outcome = Some(Staged::Unreadable(err.message));
                break;
            }
            Message::Failed(err) => {
                outcome = Some(match err.kind() {
                    ErrorKind::User if !matches!(err, EngineError::NewColumns { .. }) => {
                        Staged::Unreadable(err.to_string())
                    }
                    _ => Staged::Stop(err),
                });
                break;
            }
        }
    }
    drop(rx);
    decoder.await.map_err(|e| EngineError::Internal(format!("decoder of `{}` panicked: {e}", file.path)))?;
    if let Some(outcome) = outcome {
        if let Some(writer) = data {
            writer.abort().await;
        }
        if let Some(writer) = quarantine {
            writer.abort().await;
        }
        return Ok(outcome);
    }
    if let Some(writer) = data {
        data_adds.extend(writer.close().await?);
    }
    let quarantine_adds = match quarantine {
        Some(writer) => writer.close().await?,
        None => Vec::new(),
    };
    Ok(Staged::Done(StagedFile { data_adds, held: held.unwrap_or_default(), quarantine_adds, rows, quarantined }))
}

fn decode_file_blocking(job: &FileJob, file: &SourceFile, tx: &mpsc::Sender<Message>) {
    let origin = ChunkOrigin { file: &file.path, load_id: &job.load_id, ingested_at_micros: job.ingested_at_micros };
    let result = (|| -> std::result::Result<(), Message> {
        let input = job.source.open(file).map_err(Message::Unreadable)?;
        let mut decoder = job.format.decoder(input, job.rows_per_chunk).map_err(Message::Unreadable)?;
        while let Some(chunk) = decoder.next_chunk().map_err(Message::Unreadable)? {
            let conformed = conform(chunk, &job.spec, &job.columns, &origin).map_err(Message::Failed)?;
            if tx.blocking_send(Message::Chunk(conformed)).is_err() {
                return Ok(());
            }
        }
        Ok(())
    })();
    if let Err(message) = result {
        let _ = tx.blocking_send(message);
    }
}

/// Quarantine rows in the quarantine table's schema.
pub fn quarantine_batch(bad: &[BadRecord], file: &str, load_id: &str, ingested_at_micros: i64) -> Result<RecordBatch> {
    let n = bad.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(crate::conform::repeated(file, n)),
        Arc::new(Int64Array::from_iter_values(bad.iter().map(|b| b.row))),
        Arc::new(StringArray::from_iter_values(bad.iter().map(|b| b.code.as_str()))),
        Arc::new(StringArray::from_iter_values(bad.iter().map(|b| b.message.as_str()))),
        Arc::new(StringArray::from_iter(bad.iter().map(|b| b.raw.as_deref()))),
        Arc::new(crate::conform::repeated(load_id, n)),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(ingested_at_micros, n))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::new_null(n)),
        Arc::new(Int64Array::new_null(n)),
    ];
    RecordBatch::try_new(quarantine_schema(), columns).map_err(|e| EngineError::arrow("assembling quarantine rows", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> (SourceFile, bool) {
        (SourceFile::new(path, size, 0), false)
    }

    #[test]
    fn groups_respect_count_and_bytes() {
        let files = vec![file("a", 10), file("b", 10), file("c", 10), file("d", 100), file("e", 1)];
        let groups = commit_groups(files.clone(), 2, 1000);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        let groups = commit_groups(files, 10, 25);
        let names: Vec<Vec<&str>> = groups.iter().map(|g| g.iter().map(|(f, _)| f.path.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"]]);
    }
}
