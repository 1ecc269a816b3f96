//! The `inlet` command line.
//!
//! Exit codes: 0 success; 1 a user error (pipeline file, input that needs a decision);
//! 2 an external failure (storage, network; retrying may help); 3 an internal error;
//! 4 the run finished but some files could not be read (they are retried next run).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod alerts;
mod dashboard;
mod lineage;
mod metrics;
mod output;
mod serve;
mod upkeeper;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use inlet_engine::config;
use inlet_engine::dag::PlanFormat;
use inlet_engine::ledger::Ledger;
use inlet_engine::run::{Pipeline, RunOptions, app_id};
use inlet_engine::table::{Table, table_url};
use inlet_engine::{EngineError, ErrorKind};

#[derive(Parser)]
#[command(name = "inlet", version, about = "Land files in Delta tables exactly once")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (also `INLET_LOG`), e.g. `info` or `inlet_engine=debug`.
    #[arg(long, global = true)]
    log: Option<String>,
    /// Logs on stderr as text for people or one JSON object a line for machines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest every new file of every source into its bronze table.
    Run {
        /// Pipeline file.
        #[arg(default_value = "inlet.toml")]
        file: PathBuf,
        /// Only this source (repeatable); derived tables are not run.
        #[arg(long = "source")]
        sources: Vec<String>,
        /// Only these tables, dbt-style: `t`, `t+` (and descendants), `+t` (and ancestors).
        #[arg(long = "select", short = 's')]
        select: Vec<String>,
        /// Derived tables run at once (0: one per core).
        #[arg(long, default_value_t = 0)]
        jobs: usize,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
        /// Records per decoded chunk.
        #[arg(long, default_value_t = RunOptions::default().rows_per_chunk, hide = true)]
        rows_per_chunk: usize,
    },
    /// Start sources over: each reads everything again from where its first run would (a
    /// database source takes a new snapshot, through a new slot for CDC), and its first
    /// commit replaces its bronze table's rows. For a slot that was lost or moved. Derived
    /// tables are not run: the next `inlet run` refreshes them.
    Resnapshot {
        /// Sources: a name, or the name of a source of several tables for all of them.
        #[arg(required = true)]
        sources: Vec<String>,
        #[arg(long, short = 'f', default_value = "inlet.toml")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Keep the lake fresh: ingest files as they arrive and refresh the tables over them,
    /// until SIGINT or SIGTERM; `/metrics`, `/health` and `/ready` on `pipeline.serve.listen`.
    Serve {
        #[arg(default_value = "inlet.toml")]
        file: PathBuf,
    },
    /// Check a pipeline file (and its SQL) without touching any data.
    Validate {
        #[arg(default_value = "inlet.toml")]
        file: PathBuf,
    },
    /// Print the table graph in run order.
    Plan {
        #[arg(default_value = "inlet.toml")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = PlanOutput::Text)]
        format: PlanOutput,
    },
    /// The versions of a table: time, operation, run, rows, inputs, expectations.
    History {
        /// Table, `<layer>.<name>`.
        table: String,
        #[arg(long, short = 'f', default_value = "inlet.toml")]
        file: PathBuf,
        /// Newest versions shown.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// List the source files each version ingested.
        #[arg(long)]
        files: bool,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// One version of a table in full.
    Audit {
        table: String,
        #[arg(long)]
        version: i64,
        #[arg(long, short = 'f', default_value = "inlet.toml")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Run SQL over the lake's tables (`<layer>.<name>`, `_inlet.runs`), read only.
    Query {
        sql: String,
        #[arg(long, short = 'f', default_value = "inlet.toml")]
        file: PathBuf,
        /// A version number, or a time (RFC 3339 or a date): the tables as they were then.
        #[arg(long)]
        as_of: Option<String>,
        /// `table` (default), or `csv`, `json`, `parquet`, each with an optional file to
        /// write (parquet needs one), e.g. `--output csv out.csv`.
        #[arg(long, num_args = 1..=2, value_names = ["FORMAT", "FILE"])]
        output: Vec<String>,
    },
    /// Restore a table to an earlier version (one new commit; later versions stay in history).
    Restore {
        table: String,
        #[arg(long, conflicts_with = "timestamp", required_unless_present = "timestamp")]
        version: Option<i64>,
        /// RFC 3339 time or a date: the latest version committed at or before it.
        #[arg(long)]
        timestamp: Option<String>,
        /// Why, recorded in the commit (with the user).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, short = 'f', default_value = "inlet.toml")]
        file: PathBuf,
    },
    /// Compact a table's small files (one commit that changes no row; incremental readers
    /// and the ledger are not affected).
    Optimize {
        table: String,
        /// Size the files are packed up to (default: the table's `delta.targetFileSize`).
        #[arg(long)]
        target_file_size_bytes: Option<u64>,
        /// Z-order the rows by these columns (comma-separated) instead of bin-packing.
        #[arg(long, value_delimiter = ',')]
        zorder_by: Vec<String>,
        /// Only the partitions this predicate on partition columns selects, e.g.
        /// `day >= '2026-01-01' AND region IN ('eu', 'us')`.
        #[arg(long = "where")]
        partition_filter: Option<String>,
        /// Compact even though a table appending incrementally from this one has not read
        /// its newest versions (that table then needs one run with `incremental = false`).
        #[arg(long)]
        force: bool,
        #[arg(long, short = 'f', default_value = "inlet.toml")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Delete the files that versions older than the retention removed.
    Vacuum {
        table: String,
        /// Keep what versions of the last N hours need (default: the table's
        /// `delta.deletedFileRetentionDuration`, 168).
        #[arg(long)]
        retain_hours: Option<u64>,
        /// List what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Allow a retention under the table's `delta.deletedFileRetentionDuration`.
        #[arg(long)]
        force: bool,
        /// Also delete files no commit ever added (runs that died), older than the retention.
        #[arg(long)]
        full: bool,
        #[arg(long, short = 'f', default_value = "inlet.toml")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Send quarantined rows through the table's expectations again; those that pass land, once.
    Replay {
        table: String,
        /// Only rows that broke this expectation (or have this error code).
        #[arg(long)]
        rule: Option<String>,
        /// Only rows of this load (run id).
        #[arg(long)]
        load_id: Option<String>,
        #[arg(long, short = 'f', default_value = "inlet.toml")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Recompute a `replace_partitions` table one day at a time, each day its own commit.
    Backfill {
        table: String,
        /// First day, `YYYY-MM-DD`.
        #[arg(long)]
        from: String,
        /// Last day, inclusive.
        #[arg(long)]
        to: String,
        /// Only the days no backfill has completed yet (from the run history).
        #[arg(long)]
        missing: bool,
        #[arg(long, short = 'f', default_value = "inlet.toml")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Each source and table: last success, last failure, freshness, backlog.
    Status {
        #[arg(default_value = "inlet.toml")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// The run history, newest first: each source's and table's runs, with their errors.
    Runs {
        #[arg(default_value = "inlet.toml")]
        file: PathBuf,
        /// Only runs with this status: committed, up_to_date, failed, skipped.
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this source or table.
        #[arg(long)]
        table: Option<String>,
        /// Only runs that ended at or after this time (RFC 3339 or a date).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Serve the dashboard and its `/api/` read-only, running nothing (on
    /// `pipeline.serve.listen` unless `--listen` says otherwise).
    Ui {
        #[arg(default_value = "inlet.toml")]
        file: PathBuf,
        /// Address to listen on, e.g. `127.0.0.1:8080` (port 0: any free port).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Quarantined rows of a table, by rule or error code.
    Quarantine {
        table: String,
        #[arg(long, short = 'f', default_value = "inlet.toml")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// List the file ledger of a table: which files are in it, from which load.
    Files {
        /// Table, `<layer>.<name>`.
        table: String,
        /// Pipeline file.
        #[arg(long, short = 'f', default_value = "inlet.toml")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlanOutput {
    Text,
    Dot,
    Mermaid,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log.as_deref(), cli.log_format);
    match execute(cli.command) {
        Ok(code) => code,
        Err(err) => {
            let kind = err.downcast_ref::<EngineError>().map(EngineError::kind);
            eprintln!("error: {err:#}");
            exit_code(kind.unwrap_or(ErrorKind::Internal))
        }
    }
}

fn exit_code(kind: ErrorKind) -> ExitCode {
    ExitCode::from(match kind {
        ErrorKind::User => 1,
        ErrorKind::External => 2,
        ErrorKind::Internal => 3,
    })
}

fn init_tracing(filter: Option<&str>, format: LogFormat) {
    let filter =
        filter.map(str::to_owned).or_else(|| std::env::var("INLET_LOG").ok()).unwrap_or_else(|| "warn".to_owned());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("inlet")
        .build()
        .context("starting the async runtime")
}

fn load_pipeline(file: &Path) -> anyhow::Result<Pipeline> {
    let config = config::load(file)?;
    let base_dir =
        file.parent().map(Path::to_owned).filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| PathBuf::from("."));
    // The one place the environment is read: `${env:NAME}` secrets come from it.
    let env = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    Ok(Pipeline::new(config, base_dir)?.with_env(inlet_engine::run::Environment::new(env)))
}

fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { file } => {
            let pipeline = load_pipeline(&file)?;
            runtime()?.block_on(serve::serve(pipeline))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { file } => {
            let pipeline = load_pipeline(&file)?;
            let config = &pipeline.config;
            println!("{}: ok ({} sources, {} tables)", file.display(), config.sources.len(), config.tables.len());
            for (name, source) in &config.sources {
                println!("  {name} -> {}", source.target());
            }
            for table in pipeline.dag.order() {
                let inputs: Vec<&str> = pipeline.dag.upstream(table).map(String::as_str).collect();
                let write = config.tables.get(table).map(|t| t.write.as_str()).unwrap_or_default();
                println!("  {table} ({write}) <- {}", inputs.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan { file, format } => {
            let pipeline = load_pipeline(&file)?;
            let format = match format {
                PlanOutput::Text => PlanFormat::Text,
                PlanOutput::Dot => PlanFormat::Dot,
                PlanOutput::Mermaid => PlanFormat::Mermaid,
            };
            print!("{}", pipeline.dag.render(format));
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { file, sources, select, jobs, output, rows_per_chunk } => {
            let pipeline = load_pipeline(&file)?;
            let options = RunOptions { sources, select, jobs, rows_per_chunk, ..RunOptions::default() };
            run(&pipeline, &options, output)
        }
        Command::Resnapshot { sources, file, output } => {
            let pipeline = load_pipeline(&file)?;
            let sources = pipeline.extractor_sources(&sources)?;
            let options = RunOptions { sources, restart: true, ..RunOptions::default() };
            run(&pipeline, &options, output)
        }
        Command::History { table, file, limit, files, output } => {
            let pipeline = load_pipeline(&file)?;
            let records = runtime()?.block_on(async {
                let table = inlet_engine::query::open(&pipeline.lake, &table).await?;
                inlet_engine::audit::history(&pipeline.lake, &table, limit).await
            })?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&records)?),
                Output::Human => print!("{}", output::history(&table, &records, files)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { table, version, file, output } => {
            let pipeline = load_pipeline(&file)?;
            let record = runtime()?.block_on(async {
                let opened = inlet_engine::query::open(&pipeline.lake, &table).await?;
                inlet_engine::audit::version(&pipeline.lake, &opened, version).await
            })?;
            let Some(record) = record else {
                anyhow::bail!(EngineError::Config {
                    path: file,
                    message: format!("table `{table}` has no version {version}"),
                });
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&record)?),
                Output::Human => print!("{}", output::audit(&table, &record)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Query { sql, file, as_of, output } => {
            let pipeline = load_pipeline(&file)?;
            let as_of = match as_of {
                None => inlet_engine::query::AsOf::Latest,
                Some(text) => inlet_engine::query::AsOf::parse(&text).map_err(|message| EngineError::Config {
                    path: file.clone(),
                    message: format!("--as-of: {message}"),
                })?,
            };
            let (schema, batches) = runtime()?.block_on(inlet_engine::query::run(&pipeline.lake, &sql, as_of))?;
            output::query_result(&schema, &batches, &output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { table, version, timestamp, reason, file } => {
            let pipeline = load_pipeline(&file)?;
            let to = match (version, timestamp) {
                (Some(version), _) => inlet_engine::table::RestoreTo::Version(version),
                (None, Some(text)) => match inlet_engine::query::AsOf::parse(&text) {
                    Ok(inlet_engine::query::AsOf::Time(at)) => inlet_engine::table::RestoreTo::Time(at),
                    _ => anyhow::bail!(EngineError::Config {
                        path: file,
                        message: format!("--timestamp: `{text}` is not an RFC 3339 time or a date"),
                    }),
                },
                (None, None) => anyhow::bail!("give --version or --timestamp"),
            };
            let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
            let version = runtime()?.block_on(async {
                let mut opened = inlet_engine::query::open(&pipeline.lake, &table).await?;
                let from = opened.version();
                let note = serde_json::json!({
                    "user": user,
                    "reason": reason,
                    "from_version": from,
                    "to": format!("{to:?}"),
                });
                let summary = format!(
                    "inlet restore {table} to {to:?} by {user}{}",
                    reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                );
                let metadata = std::collections::HashMap::from([
                    ("inlet_restore".to_owned(), note),
                    ("userMetadata".to_owned(), serde_json::Value::String(summary)),
                ]);
                let started = chrono::Utc::now().timestamp_micros();
                let version = opened.restore(to, metadata).await?;
                let name = &pipeline.config.pipeline.name;
                if let Err(err) = inlet_engine::audit::record_operation(
                    &pipeline.lake,
                    name,
                    "restore",
                    &table,
                    version..=version,
                    started,
                )
                .await
                {
                    eprintln!("warning: run history not written: {err}");
                }
                Ok::<_, EngineError>(version)
            })?;
            println!("{table}: restored to {to:?}; new version {version}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Optimize { table, target_file_size_bytes, zorder_by, partition_filter, force, file, output } => {
            let pipeline = load_pipeline(&file)?;
            let options = inlet_engine::table::OptimizeOptions { target_file_size_bytes, zorder_by, partition_filter };
            let report =
                runtime()?.block_on(inlet_engine::upkeep::optimize(&pipeline, &table, &options, "inlet", force))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Human => match report.version {
                    Some(version) => println!(
                        "{table}: {} files ({} bytes) compacted into {} ({} bytes); new version {version}",
                        report.files_removed, report.bytes_removed, report.files_added, report.bytes_added
                    ),
                    None => println!("{table}: nothing to compact"),
                },
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Vacuum { table, retain_hours, dry_run, force, full, file, output } => {
            let pipeline = load_pipeline(&file)?;
            let options = inlet_engine::table::VacuumOptions { retain_hours, dry_run, force, full };
            let report = runtime()?.block_on(inlet_engine::upkeep::vacuum(&pipeline, &table, &options, "inlet"))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Human => {
                    let verb = if report.dry_run { "would delete" } else { "deleted" };
                    println!("{table}: {verb} {} files", report.files.len());
                    for path in &report.files {
                        println!("  {path}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { table, rule, load_id, file, output } => {
            let pipeline = load_pipeline(&file)?;
            let options = inlet_engine::replay::ReplayOptions { rule, load_id };
            let report = runtime()?.block_on(inlet_engine::replay::replay(
                &pipeline,
                &inlet_connectors::Connectors,
                &table,
                &options,
            ))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Human => {
                    println!(
                        "{table}: {} quarantined rows chosen, {} landed{}, {} still quarantined",
                        report.candidates,
                        report.landed,
                        report.table_version.map(|v| format!(" (version {v})")).unwrap_or_default(),
                        report.still_quarantined
                    );
                    for note in &report.notes {
                        println!("  {note}");
                    }
                    if let Some(quality) = &report.quality {
                        println!("  {}", quality.summary());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backfill { table, from, to, missing, file, output } => {
            let pipeline = load_pipeline(&file)?;
            let day = |flag: &str, text: &str| {
                chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| EngineError::Config {
                    path: file.clone(),
                    message: format!("{flag}: `{text}` is not a date such as 2024-01-31"),
                })
            };
            let options =
                inlet_engine::backfill::BackfillOptions { from: day("--from", &from)?, to: day("--to", &to)?, missing };
            let report = runtime()?.block_on(inlet_engine::backfill::backfill(&pipeline, &table, &options))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Human => print!("{}", output::backfill(&report)),
            }
            let failure = report.windows.iter().find_map(|w| w.report.error.as_ref().map(|e| e.kind));
            Ok(failure.map_or(ExitCode::SUCCESS, exit_code))
        }
        Command::Status { file, output } => {
            let pipeline = load_pipeline(&file)?;
            let rows = runtime()?.block_on(inlet_engine::status::status(&pipeline, &inlet_connectors::Connectors))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Human => print!("{}", output::status(&rows)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Quarantine { table, file, output } => {
            let pipeline = load_pipeline(&file)?;
            let (schema, batches) = runtime()?.block_on(inlet_engine::quarantine::summary(&pipeline.lake, &table))?;
            match output {
                Output::Json => output::query_result(&schema, &batches, &["json".to_owned()])?,
                Output::Human if batches.iter().all(|b| b.num_rows() == 0) => println!("{table}: nothing quarantined"),
                Output::Human => output::query_result(&schema, &batches, &[])?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { file, status, table, since, limit, offset, output } => {
            let pipeline = load_pipeline(&file)?;
            let since_micros = match since {
                None => None,
                Some(text) => match inlet_engine::query::AsOf::parse(&text) {
                    Ok(inlet_engine::query::AsOf::Time(at)) => Some(at.timestamp_micros()),
                    _ => anyhow::bail!(EngineError::Config {
                        path: file,
                        message: format!("--since: `{text}` is not an RFC 3339 time or a date"),
                    }),
                },
            };
            let filter = inlet_engine::audit::RunFilter { status, name: table, since_micros, ..Default::default() };
            let (runs, more) =
                runtime()?.block_on(inlet_engine::audit::runs(&pipeline.lake, &filter, limit, offset))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&runs)?),
                Output::Human => print!("{}", output::runs(&runs, offset, more)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ui { file, listen } => {
            let pipeline = load_pipeline(&file)?;
            runtime()?.block_on(dashboard::serve_read_only(pipeline, listen))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Files { table, file, output } => {
            let pipeline = load_pipeline(&file)?;
            let (source, _) = pipeline.source_for_table(&table).ok_or_else(|| EngineError::Config {
                path: file.clone(),
                message: format!("no source writes table `{table}`"),
            })?;
            let name = config::TableName::parse(&table).ok_or_else(|| EngineError::Config {
                path: file.clone(),
                message: format!("`{table}` is not `<layer>.<name>`"),
            })?;
            let runtime = runtime()?;
            let opened = runtime.block_on(Table::open(&table, table_url(&pipeline.lake, &name)?))?;
            // An extractor's position is one value: the latest commit's.
            if pipeline.source_config(source)?.files().is_none() {
                let cursor =
                    runtime.block_on(inlet_engine::ingest::position::Cursor::load(&opened, &app_id(source)))?;
                let shown = serde_json::json!({ "txn_version": cursor.txn_version, "position": cursor.position });
                println!("{}", serde_json::to_string_pretty(&shown)?);
                return Ok(ExitCode::SUCCESS);
            }
            let entries = runtime.block_on(async {
                Ok::<_, EngineError>(Ledger::load(&opened, &app_id(source)).await?.entries().to_vec())
            })?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
                Output::Human => print!("{}", output::ledger_table(&entries)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How long `inlet run` waits at its end for lineage events still queued.
const LINEAGE_FLUSH_SECS: u64 = 10;

/// Runs the pipeline (or what `options` select), prints what it did, and says how it went.
fn run(pipeline: &Pipeline, options: &RunOptions, output: Output) -> anyhow::Result<ExitCode> {
    let progress = Arc::new(output::Progress::new(output == Output::Human));
    let report = runtime()?.block_on(async {
        let lineage = lineage::Lineage::start(Arc::new(pipeline.clone()), None)?;
        let report = inlet_engine::run::run(pipeline, &inlet_connectors::Connectors, progress.clone(), options).await;
        if let Some(lineage) = lineage {
            if let Ok(report) = &report {
                lineage.run_done(report, options.record_idle);
            }
            lineage.close(std::time::Duration::from_secs(LINEAGE_FLUSH_SECS)).await;
        }
        anyhow::Ok(report?)
    })?;
    progress.finish();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Human => print!("{}", output::summary(&report)),
    }
    Ok(match report.worst_error() {
        Some(kind) => exit_code(kind),
        None if report.has_failed_files() => ExitCode::from(4),
        None => ExitCode::SUCCESS,
    })
}
