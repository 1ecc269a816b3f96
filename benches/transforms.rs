//! `inlet-transform-bench`: the merge and SCD2 benches of derived tables.
//!
//! Merge: a 10M-row `silver.orders` (merge by `order_id`, latest `order_ts` wins) takes a
//! change batch of 1M rows (500k updates of existing orders, 500k new). SCD2: a 1M-row
//! customers dimension takes the next day's snapshot (10% changed, 1% deleted, 2% new).
//! The starting lake is built once and cached; each iteration starts from a hard-linked copy
//! of it (Delta files are immutable), lands the change file in bronze (not measured), then
//! runs the derived table alone and reports its seconds and the process's peak RSS.
//!
//! `cargo build --release --workspace --bins`, then `inlet-transform-bench --bench merge` from the
//! release directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use inlet_benches::{
    Format, MERGE_PIPELINE, SCD2_PIPELINE, generate, link_tree, median, peak_rss_bytes, reset_peak_rss,
    write_customers, write_file, write_order_changes,
};
use inlet_engine::run::{Pipeline, Quiet, RunOptions, RunReport, run};

#[derive(Parser)]
struct Args {
    /// `merge` or `scd2`.
    #[arg(long, default_value = "merge")]
    bench: String,
    #[arg(long, default_value_t = 40)]
    files: u64,
    #[arg(long, default_value_t = 250_000)]
    rows_per_file: u64,
    /// Rows of the merge's change batch (half updates, half new).
    #[arg(long, default_value_t = 1_000_000)]
    changes: u64,
    /// The merge's updates hit orders among this many most recent ones (the whole table:
    /// `--update-window 10000000`, every file rewritten).
    #[arg(long, default_value_t = 1_000_000)]
    update_window: u64,
    /// Customers in the SCD2 dimension.
    #[arg(long, default_value_t = 1_000_000)]
    customers: u64,
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    #[arg(long, default_value = "/tmp/inlet-bench")]
    dir: PathBuf,
}

fn run_pipeline(runtime: &tokio::runtime::Runtime, dir: &Path, options: &RunOptions) -> anyhow::Result<RunReport> {
    let config = inlet_engine::config::load(&dir.join("inlet.toml"))?;
    let pipeline = Pipeline::new(config, dir.to_owned())?;
    let report = runtime.block_on(run(&pipeline, &inlet_connectors::Connectors, Arc::new(Quiet), options))?;
    for source in &report.sources {
        if let Some(error) = &source.error {
            bail!("source {} failed: {}", source.source, error.message);
        }
    }
    for table in &report.tables {
        if let Some(error) = &table.error {
            bail!("table {} failed: {}", table.table, error.message);
        }
    }
    Ok(report)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Ok(filter) = std::env::var("INLET_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (name, pipeline, table, source) = match args.bench.as_str() {
        "merge" => (
            format!("merge-{}x{}-w{}", args.files, args.rows_per_file, args.update_window),
            MERGE_PIPELINE,
            "silver.orders",
            "orders",
        ),
        "scd2" => (format!("scd2-{}", args.customers), SCD2_PIPELINE, "silver.customers", "customers"),
        other => bail!("unknown bench `{other}` (merge or scd2)"),
    };
    let template = args.dir.join(format!("{name}-template"));
    let change = args.dir.join(format!("{name}-change.csv"));
    if !template.join(".done").exists() {
        let started = Instant::now();
        let _ = std::fs::remove_dir_all(&template);
        std::fs::create_dir_all(template.join("landing"))?;
        std::fs::write(template.join("inlet.toml"), pipeline)?;
        if args.bench == "merge" {
            generate(&template.join("landing"), Format::Csv, args.files, args.rows_per_file, 42)?;
            let existing = args.files * args.rows_per_file;
            write_file(&change, |out| {
                write_order_changes(
                    out,
                    7,
                    existing,
                    args.update_window,
                    args.changes / 2,
                    args.changes - args.changes / 2,
                )
            })?;
        } else {
            write_file(&template.join("landing/day0.csv"), |out| write_customers(out, 0, args.customers))?;
            write_file(&change, |out| write_customers(out, 1, args.customers))?;
        }
        run_pipeline(&runtime, &template, &RunOptions::default())?;
        std::fs::write(template.join(".done"), b"")?;
        eprintln!("built the starting lake in {:.1}s", started.elapsed().as_secs_f64());
        // Measure in a fresh process: this one holds the build's memory.
        let status = Command::new(std::env::current_exe()?).args(std::env::args_os().skip(1)).status()?;
        std::process::exit(status.code().unwrap_or(1));
    }

    let (mut seconds, mut rss) = (Vec::new(), Vec::new());
    for iteration in 0..args.iterations {
        let scratch = args.dir.join(format!("{name}-scratch"));
        let _ = std::fs::remove_dir_all(&scratch);
        link_tree(&template, &scratch)?;
        std::fs::copy(&change, scratch.join("landing/zz-change.csv"))?;
        let sources_only = RunOptions { sources: vec![source.to_owned()], ..RunOptions::default() };
        run_pipeline(&runtime, &scratch, &sources_only)?;
        let table_only = RunOptions { select: vec![table.to_owned()], ..RunOptions::default() };
        reset_peak_rss()?;
        let started = Instant::now();
        let report = run_pipeline(&runtime, &scratch, &table_only)?;
        let elapsed = started.elapsed().as_secs_f64();
        let peak = peak_rss_bytes()?;
        let result = report.tables.first().context("no table ran")?;
        println!(
            "run {iteration}: {elapsed:.2}s  peak RSS {} MiB  status {:?} inserted {} updated {} deleted {} unchanged {}",
            peak / (1 << 20),
            result.status,
            result.rows.inserted,
            result.rows.updated,
            result.rows.deleted,
            result.rows.unchanged
        );
        seconds.push(elapsed);
        rss.push(peak as f64);
    }
    println!(
        "median of {}: {} {:.2}s, peak RSS {:.0} MiB",
        args.iterations,
        args.bench,
        median(&mut seconds),
        median(&mut rss) / f64::from(1 << 20)
    );
    Ok(())
}
