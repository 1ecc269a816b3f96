//! The `inlet` command line.
//!
//! Exit codes: 0 success; 1 a user error (pipeline file, input that needs a decision);
//! 2 an external failure (storage, network; retrying may help); 3 an internal error;
//! 4 the run finished but some files could not be read (they are retried next run).

mod output;

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
    init_tracing(cli.log.as_deref());
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

fn init_tracing(filter: Option<&str>) {
    let filter =
        filter.map(str::to_owned).or_else(|| std::env::var("INLET_LOG").ok()).unwrap_or_else(|| "warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
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
    Ok(Pipeline::new(config, base_dir)?)
}

fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
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
            let options = RunOptions { sources, select, jobs, rows_per_chunk };
            let progress = Arc::new(output::Progress::new(output == Output::Human));
            let report = runtime()?.block_on(inlet_engine::run::run(
                &pipeline,
                &inlet_connectors::Connectors,
                progress.clone(),
                &options,
            ))?;
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
            let entries = runtime()?.block_on(async {
                let table = Table::open(&table, table_url(&pipeline.lake, &name)?).await?;
                Ok::<_, EngineError>(Ledger::load(&table, &app_id(source)).await?.entries().to_vec())
            })?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
                Output::Human => print!("{}", output::ledger_table(&entries)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
