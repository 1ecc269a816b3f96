//! Sources into bronze: every unit of input landed in its table exactly once.
//!
//! One path for every kind of source. A run of a source:
//! 1. opens its table and quarantine table and reads where the source stands from them
//!    ([`position`]: the file ledger, or the extractor's position), finishing first a group
//!    a killed run left between its two commits ([`commit::finish_interrupted`]);
//! 2. cuts the work into commit groups: new files by count and bytes ([`files`]), or pages
//!    as they arrive by records ([`extract`]);
//! 3. stages each group ([`stage`]): units decoded, conformed to the table (types, drift,
//!    metadata columns), checked by the source's expectations and written to Parquet files
//!    nothing references yet;
//! 4. publishes it ([`commit`]): the quarantine rows with an intent, then the rows with the
//!    source's `txn` and new position, in one commit that is the only one that counts.
//!
//! Nothing here knows which system a source reads: connectors implement
//! [`crate::source::FileSource`] or [`crate::source::Extractor`], and a new kind of source
//! needs a connector and, at most, a new kind of position.

mod commit;
mod derive;
mod extract;
mod files;
pub mod ledger;
pub mod position;
mod report;
mod stage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use tracing::{debug, info, warn};

pub(crate) use commit::quarantine_schema_change;
pub use report::{ChangedFile, CommitReport, FailedFile, ReportedError, SourceReport};
pub use stage::quarantine_batch;

use crate::config::{SourceConfig, TableName};
use crate::conform::{ConformSpec, TableColumns};
use crate::error::{EngineError, Result};
use crate::run::{Connectors, Pipeline, RunObserver, app_id};
use crate::schema::ColumnType;
use crate::source::Source;
use crate::table::{Table, table_url};

/// What every source of one run shares.
pub(crate) struct RunContext {
    pub load_id: String,
    pub ingested_at_micros: i64,
    /// Files decoded and written at once.
    pub parallel_files: usize,
    pub rows_per_chunk: usize,
    /// Leave files still being written for later (`inlet serve`).
    pub settle: bool,
    /// Take everything available now: list a queue again while it has more (`inlet run`).
    pub drain: bool,
    /// Extractors start over, their first commit replacing the table's rows.
    pub restart: bool,
}

/// Whether a source would list more right away.
pub(crate) enum More {
    Yes,
    No,
}

/// How often a source that lost a commit race to another writer plans again in one run.
const CONFLICT_RETRIES: u32 = 8;

/// Listings of one source in one run, at most (a queue fed faster than it is read must
/// not keep `inlet run` going for ever).
const DRAIN_PASSES: u32 = 1000;

/// A random wait before planning again, growing with the attempt (writers that collided
/// should not collide again).
fn conflict_backoff(attempt: u32) -> std::time::Duration {
    let ceiling_ms = 50u64 << attempt.min(6);
    std::time::Duration::from_millis(rand::random_range(ceiling_ms / 4..=ceiling_ms))
}

/// Runs one source: passes until it has nothing more (or has more only for the next run),
/// planning again after losing a commit race. Never fails: the report says why it stopped.
pub(crate) async fn ingest(
    pipeline: &Pipeline,
    connectors: &dyn Connectors,
    observer: &dyn RunObserver,
    context: &RunContext,
    name: &String,
    config: &SourceConfig,
) -> SourceReport {
    let began = Instant::now();
    let mut report = SourceReport {
        source: name.clone(),
        kind: config.kind().as_str().to_owned(),
        table: config.target().to_owned(),
        started_micros: chrono::Utc::now().timestamp_micros(),
        ..Default::default()
    };
    let mut attempt = 0;
    let mut passes = 1;
    let outcome = loop {
        // What this pass adds to the report, undone if it loses a commit race.
        let mark = (report.files_listed, report.files_unsettled, report.failed_files.len(), report.changed_files.len());
        match run_source(pipeline, connectors, observer, context, name, config, &mut report).await {
            Ok(More::Yes) if context.drain && passes < DRAIN_PASSES => {
                passes += 1;
                debug!(source = %name, passes, "the source has more; listing again");
            }
            Ok(More::Yes) if context.drain => {
                info!(source = %name, passes, "the source still has more; the next run takes it");
                break Ok(());
            }
            Ok(_) => break Ok(()),
            // Another writer committed first (the same source in another process, or the
            // table's creation): plan again from what the table says, so nothing is ingested
            // twice.
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
    observer.source_done(&report);
    report
}

/// One pass over a source.
async fn run_source(
    pipeline: &Pipeline,
    connectors: &dyn Connectors,
    observer: &dyn RunObserver,
    context: &RunContext,
    name: &str,
    config: &SourceConfig,
    report: &mut SourceReport,
) -> Result<More> {
    let target = TableName::parse(config.target())
        .ok_or_else(|| EngineError::Internal(format!("unvalidated target `{}`", config.target())))?;
    let url = table_url(&pipeline.lake, &target)?;
    report.table_url = url.to_string();
    let mut table = Table::open(&target.to_string(), url).await?;
    // An extractor's keys and cursor are what readers of its table filter on.
    let (keys, cursor) = match config {
        SourceConfig::Rest(rest) => (rest.primary_key.clone(), None),
        SourceConfig::Postgres(pg) => (pg.primary_key.clone(), pg.cursor_column.clone()),
        SourceConfig::Files(_) => (Vec::new(), None),
    };
    table.keep_stats_for(keys.into_iter().chain(cursor));
    let quarantine =
        Table::open(&target.quarantine().to_string(), table_url(&pipeline.lake, &target.quarantine())?).await?;
    // Also what a source that stops early reports.
    report.table_version = table.version();
    report.quarantine_version = quarantine.version();
    let app_id = app_id(name);
    // A group a killed run left between its quarantine and its data commit comes first: it
    // needs nothing of the source (which may not build now, a secret unset).
    let data_txn = table.app_version(&app_id).await?.unwrap_or(-1);
    let interrupted = commit::finish_interrupted(&mut table, &quarantine, &app_id, data_txn).await?;
    let source = connectors.source(name, pipeline)?;
    let provenance = config.provenance();
    let columns = Arc::new(Mutex::new(match table.arrow_schema()? {
        Some(schema) => TableColumns::existing(&schema, config.on_new_columns(), provenance),
        None => TableColumns::new_table(config.on_new_columns(), provenance),
    }));
    let mut run = SourceRun {
        pipeline,
        observer,
        context,
        name,
        config,
        target,
        app_id,
        spec: Arc::new(conform_spec(name, config)),
        columns,
        table,
        quarantine,
    };
    let redo = match interrupted {
        Some(commit::Interrupted::Finished { version, record, quality }) => {
            run.report_finished(version, &record, quality.map(|q| *q), report);
            None
        }
        Some(commit::Interrupted::Redo { txn_version, units }) => Some(Redo { txn_version, units }),
        None => None,
    };
    match source {
        Source::Files { files, format } => files::ingest(&mut run, files, format, redo, report).await,
        Source::Extractor(extractor) => extract::ingest(&mut run, extractor, redo, report).await,
    }
}

/// A group an interrupted run committed the quarantine rows of, to stage again from the
/// source: its data commit has `txn` version `txn_version`.
pub(crate) struct Redo {
    pub txn_version: i64,
    /// The group's units (file paths): a file source redoes exactly these.
    pub units: Vec<String>,
}

/// A source's run in progress: its tables and what its groups share.
pub(crate) struct SourceRun<'a> {
    pub pipeline: &'a Pipeline,
    pub observer: &'a dyn RunObserver,
    pub context: &'a RunContext,
    pub name: &'a str,
    pub config: &'a SourceConfig,
    pub target: TableName,
    pub app_id: String,
    pub spec: Arc<ConformSpec>,
    /// The table's columns as this run evolves them.
    pub columns: Arc<Mutex<TableColumns>>,
    pub table: Table,
    pub quarantine: Table,
}

/// A staged group's totals and record, ready to publish.
pub(crate) struct StagedGroup {
    pub txn_version: i64,
    pub data_adds: Vec<deltalake::kernel::Add>,
    pub quarantine_adds: Vec<deltalake::kernel::Add>,
    /// The table's files the group replaces (a source starting over), else none.
    pub removes: Vec<deltalake::kernel::Remove>,
    pub record: position::SourceCommit,
    pub rows: u64,
    pub quarantined: u64,
    pub bytes: u64,
    /// The group's units: file paths or page URLs.
    pub units: Vec<String>,
    pub checks: Option<Arc<crate::expect::Checks>>,
    /// A redone group whose quarantine rows an interrupted run committed already.
    pub quarantine_committed: bool,
}

impl SourceRun<'_> {
    /// What the units of the next group share, with the source's expectations over it.
    /// Whether the table's columns are known (from the table, or a unit staged in this run):
    /// a commit can then create the table even without rows.
    fn has_columns(&self) -> bool {
        self.columns.lock().is_ok_and(|c| c.established())
    }

    async fn stage_job(&self) -> Result<stage::StageJob> {
        let checks = crate::expect::checks_for(
            &self.target.to_string(),
            self.config.expect(),
            self.config.provenance().sample_columns(),
            &self.pipeline.lake,
        )
        .await?;
        Ok(stage::StageJob {
            checks,
            spec: self.spec.clone(),
            columns: self.columns.clone(),
            data: self.table.writer_factory(&[]),
            quarantine: self.quarantine.writer_factory(&[]),
            load_id: self.context.load_id.clone(),
            ingested_at_micros: self.context.ingested_at_micros,
            rows_per_chunk: self.context.rows_per_chunk,
        })
    }

    /// Which repeat of a key `unique` removes depends on the order rows are seen: files are
    /// staged one at a time then, so a group redone after a crash decides the same way.
    fn ordered(&self) -> bool {
        self.config.expect().iter().any(|e| {
            e.check == Some(inlet_quality::Check::Unique)
                && matches!(e.on_violation, inlet_quality::Action::Drop | inlet_quality::Action::Quarantine)
        })
    }

    /// Publishes a staged group after its expectations' verdict (a failed gate commits
    /// nothing: its units stay un-ingested, its staged files orphans). Returns the version.
    async fn publish(&mut self, group: StagedGroup, report: &mut SourceReport) -> Result<i64> {
        let quality = match &group.checks {
            Some(checks) => Some(checks.verdict(chrono::Utc::now().timestamp_micros())?),
            None => None,
        };
        // The schema goes into the commit when the table is new or the group brought columns.
        let schema = self
            .columns
            .lock()
            .map_err(|_| EngineError::Internal("table columns lock poisoned".into()))?
            .arrow_schema();
        let added = added_columns(&self.table, &schema)?;
        let units = group.units.len();
        let what = if group.record.pages.is_some() { "pages" } else { "files" };
        let replacing = if group.removes.is_empty() { "" } else { ", replacing the table's rows (started over)" };
        let summary = format!(
            "inlet ingest {}: {units} {what}, {} rows, {} quarantined{replacing}",
            self.name, group.rows, group.quarantined
        );
        let metadata = crate::expect::quality_metadata(HashMap::new(), quality.as_ref(), summary)?;
        let schema = (!self.table.exists() || !added.is_empty()).then_some(schema);
        let published = commit::publish(
            &mut self.table,
            &mut self.quarantine,
            commit::Group {
                app_id: self.app_id.clone(),
                txn_version: group.txn_version,
                load_id: self.context.load_id.clone(),
                data_adds: group.data_adds,
                quarantine_adds: group.quarantine_adds,
                removes: group.removes,
                schema,
                record: group.record,
                metadata,
                units: group.units,
                quarantine_committed: group.quarantine_committed,
            },
        )
        .await?;
        info!(
            source = %self.name,
            table = %self.target,
            version = published.version,
            txn_version = group.txn_version,
            units,
            rows = group.rows,
            quarantined = group.quarantined,
            "committed"
        );
        report.rows += group.rows;
        report.quarantined += group.quarantined;
        report.bytes += group.bytes;
        report.commits.push(CommitReport {
            table_version: published.version,
            txn_version: group.txn_version,
            files: units,
            rows: group.rows,
            quarantined: group.quarantined,
            quarantine_version: published.quarantine_version,
            quality,
        });
        report.added_columns.extend(added);
        report.table_version = Some(published.version);
        report.quarantine_version = self.quarantine.version();
        Ok(published.version)
    }

    /// Records a group an interrupted run staged and this one published.
    fn report_finished(
        &self,
        version: i64,
        record: &position::SourceCommit,
        quality: Option<inlet_quality::GateReport>,
        report: &mut SourceReport,
    ) {
        info!(source = %self.name, table = %self.target, version, "published an interrupted group");
        report.files_ingested += record.files.len();
        report.pages += record.pages.as_ref().map_or(0, |p| p.pages);
        report.rows += record.rows();
        report.quarantined += record.quarantined();
        report.commits.push(CommitReport {
            table_version: version,
            txn_version: record.txn_version,
            files: record.units(),
            rows: record.rows(),
            quarantined: record.quarantined(),
            quarantine_version: self.quarantine.version(),
            quality,
        });
        report.table_version = Some(version);
    }
}

/// How a source's decoded chunks are typed and checked against its table.
pub(crate) fn conform_spec(name: &str, config: &SourceConfig) -> ConformSpec {
    let hints: HashMap<String, _> = config
        .schema_hints()
        .iter()
        .filter_map(|(column, hint)| ColumnType::parse(hint.get_ref()).ok().map(|t| (column.clone(), t.0)))
        .collect();
    ConformSpec {
        source_name: name.to_owned(),
        table: config.target().to_owned(),
        hints,
        on_new_columns: config.on_new_columns(),
    }
}

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
