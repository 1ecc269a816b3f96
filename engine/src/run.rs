//! `inlet run`: every source of a pipeline landed in its bronze table exactly once
//! ([`crate::ingest`]), then the derived tables refreshed in DAG order
//! ([`crate::transform`]), and the run recorded in the run history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;
use tokio::task::JoinSet;
use tracing::warn;
use url::Url;

use crate::config::{PipelineConfig, SourceConfig, TableName};
use crate::dag::Dag;
use crate::error::{EngineError, ErrorKind, Result};
use crate::ingest::RunContext;
pub use crate::ingest::{ChangedFile, CommitReport, FailedFile, ReportedError, SourceReport};
use crate::source::{Format, Source};
use crate::table::lake_url;
use crate::transform::{self, TableReport, TableStatus};

/// Builds sources and formats from config; implemented by `inlet-connectors`.
pub trait Connectors: Send + Sync {
    /// The source named `name` of `pipeline`: its files and their format, or its extractor.
    /// Builds clients, reads nothing yet.
    fn source(&self, name: &str, pipeline: &Pipeline) -> Result<Source>;
    /// How a quarantined record of the source `name` is decoded again (`inlet replay`).
    fn format(&self, name: &str, pipeline: &Pipeline) -> Result<Arc<dyn Format>>;
}

/// Told about progress while a run goes on (progress bars, logs).
pub trait RunObserver: Send + Sync {
    /// A source has `files` files (`bytes` in all) to ingest.
    fn source_planned(&self, _source: &str, _files: usize, _bytes: u64) {}
    /// One file (or page) is decoded and staged.
    fn file_staged(&self, _source: &str, _file: &str, _bytes: u64) {}
    /// A source is done.
    fn source_done(&self, _report: &SourceReport) {}
    /// A derived table is done (committed, up to date, skipped or failed).
    fn table_done(&self, _report: &TableReport) {}
}

/// Observes nothing.
pub struct Quiet;
impl RunObserver for Quiet {}

/// The environment variables a pipeline may read (`${env:NAME}` secrets). `bin` reads the
/// process environment; nothing else does.
#[derive(Clone, Default)]
pub struct Environment {
    variables: BTreeMap<String, String>,
}

impl Environment {
    pub fn new(variables: impl IntoIterator<Item = (String, String)>) -> Self {
        Environment { variables: variables.into_iter().collect() }
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.variables.get(name).map(String::as_str)
    }

    /// A config value that may be a `${env:NAME}` reference: the text itself, or the
    /// variable's value; `Err` names the variable when it is unset or empty.
    pub fn resolve(&self, text: &str) -> std::result::Result<String, String> {
        match crate::config::env_reference(text) {
            Some(name) => self.get(name).filter(|v| !v.is_empty()).map(str::to_owned).ok_or_else(|| name.to_owned()),
            None => Ok(text.to_owned()),
        }
    }
}

impl std::fmt::Debug for Environment {
    // Values are secrets: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment").field("variables", &self.variables.len()).finish()
    }
}

/// A pipeline ready to run: config plus where it lives.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub config: PipelineConfig,
    /// Directory of the pipeline file; relative paths are resolved against it.
    pub base_dir: PathBuf,
    pub lake: Url,
    /// The table graph (reads the `sql_file`s).
    pub dag: Dag,
    /// Where `${env:NAME}` references are read.
    pub env: Environment,
}

impl Pipeline {
    pub fn new(config: PipelineConfig, base_dir: PathBuf) -> Result<Pipeline> {
        let lake = lake_url(&base_dir, &config.pipeline.lake)?;
        let dag = Dag::load(&config, &base_dir)?;
        Ok(Pipeline { config, base_dir, lake, dag, env: Environment::default() })
    }

    /// The pipeline reading `${env:NAME}` references from `env`.
    pub fn with_env(mut self, env: Environment) -> Pipeline {
        self.env = env;
        self
    }

    /// The source whose target is `table`.
    pub fn source_for_table(&self, table: &str) -> Option<(&String, &SourceConfig)> {
        self.config.sources.iter().find(|(_, s)| s.target() == table)
    }

    /// The sources `names` stand for, each an extractor that can start over: a name, or the
    /// name of a source of several tables as written in the file (all its tables).
    pub fn extractor_sources(&self, names: &[String]) -> Result<Vec<String>> {
        let error = |message: String| EngineError::Config { path: self.base_dir.join("inlet.toml"), message };
        let mut found = Vec::new();
        for name in names {
            let matching: Vec<(&String, &SourceConfig)> = match self.config.sources.get_key_value(name) {
                Some(one) => vec![one],
                None => self
                    .config
                    .sources
                    .iter()
                    .filter(|(_, s)| matches!(s, SourceConfig::Postgres(p) if &p.group == name))
                    .collect(),
            };
            if matching.is_empty() {
                return Err(error(format!("no source named `{name}`")));
            }
            for (split, config) in matching {
                if config.kind() == crate::config::SourceKind::Files {
                    return Err(error(format!(
                        "source `{split}` reads files: only an API or database source can start over (a file source's ledger says which files are in)"
                    )));
                }
                if !found.contains(split) {
                    found.push(split.clone());
                }
            }
        }
        Ok(found)
    }

    /// The source named `name`, or a config error naming it.
    pub fn source_config(&self, name: &str) -> Result<&SourceConfig> {
        self.config.sources.get(name).ok_or_else(|| EngineError::Config {
            path: self.base_dir.join("inlet.toml"),
            message: format!("no source named `{name}`"),
        })
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
    /// Start the sources over (`inlet resnapshot`): each extractor reads from where its
    /// first run would, and its first commit replaces the table's rows.
    pub restart: bool,
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
            restart: false,
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

/// Runs every source (or those in `options.sources`), then the selected derived tables; a
/// failing source does not stop the others.
pub async fn run(
    pipeline: &Pipeline,
    connectors: &dyn Connectors,
    observer: Arc<dyn RunObserver>,
    options: &RunOptions,
) -> Result<RunReport> {
    for wanted in &options.sources {
        pipeline.source_config(wanted)?;
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
        drain: options.drain,
        restart: options.restart,
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
            source.expect().iter().any(|e| matches!(e.kind(), Ok(inlet_quality::Kind::Relationships { .. })))
        });
    let observer_ref = observer.as_ref();
    let context_ref = &context;
    let mut reports: Vec<SourceReport> = Vec::new();
    for phase in [plain, checking] {
        let done: Vec<SourceReport> = futures::stream::iter(phase)
            .map(|(name, config)| crate::ingest::ingest(pipeline, connectors, observer_ref, context_ref, name, config))
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
    let recorded = match crate::audit::record_run(&pipeline.lake, &report, options.record_idle).await {
        Ok(()) => true,
        Err(err) => {
            warn!(error = %err, "run history not written");
            false
        }
    };
    // The log policy on the tables this run wrote, and their log cleaned once mirrored.
    crate::upkeep::after_run(pipeline, &report, recorded).await;
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
