//! `inlet-e2e-bench`: ingests the seeded orders data set into a fresh bronze table, several
//! times, in process, and prints rows/s, MB/s and peak RSS per run and their medians.
//!
//! `cargo build --release --workspace --bins`, then `inlet-e2e-bench --files 40 --rows-per-file 250000`
//! from the release directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use clap::Parser;
use inlet_benches::{Format, cached_orders, expectations_toml, median, peak_rss_bytes, pipeline_toml, reset_peak_rss};
use inlet_engine::run::{Pipeline, Quiet, RunOptions, run};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 40)]
    files: u64,
    #[arg(long, default_value_t = 250_000)]
    rows_per_file: u64,
    #[arg(long, default_value_t = 5)]
    iterations: usize,
    /// `csv` or `ndjson`.
    #[arg(long, default_value = "csv")]
    format: String,
    /// Where generated inputs are cached and scratch lakes are made.
    #[arg(long, default_value = "/tmp/inlet-bench")]
    dir: PathBuf,
    /// Records per decoded chunk (the engine's default when absent).
    #[arg(long)]
    rows_per_chunk: Option<usize>,
    /// Check ten row expectations and `unique(order_id)` on every commit.
    #[arg(long)]
    expectations: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let format = match args.format.as_str() {
        "csv" => Format::Csv,
        "ndjson" => Format::Ndjson,
        other => bail!("unknown format `{other}`"),
    };
    let rows = args.files * args.rows_per_file;
    let (landing, bytes) = cached_orders(&args.dir, format, args.files, args.rows_per_file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (mut seconds, mut rss) = (Vec::new(), Vec::new());
    for iteration in 0..args.iterations {
        let scratch = args.dir.join("scratch");
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)?;
        std::os::unix::fs::symlink(&landing, scratch.join("landing"))?;
        let mut toml = pipeline_toml(format, 1000);
        if args.expectations {
            toml.push_str(expectations_toml());
        }
        let config = inlet_engine::config::parse(&toml, &scratch.join("inlet.toml"))?;
        let pipeline = Pipeline::new(config, scratch.clone())?;
        let mut options = RunOptions::default();
        if let Some(rows_per_chunk) = args.rows_per_chunk {
            options.rows_per_chunk = rows_per_chunk;
        }
        reset_peak_rss()?;
        let started = Instant::now();
        let report = runtime.block_on(run(&pipeline, &inlet_connectors::Connectors, Arc::new(Quiet), &options))?;
        let elapsed = started.elapsed().as_secs_f64();
        let peak = peak_rss_bytes()?;
        let source = &report.sources[0];
        if let Some(error) = &source.error {
            bail!("run failed: {}", error.message);
        }
        if source.rows != rows {
            bail!("ingested {} rows, expected {rows}", source.rows);
        }
        if let Some(quality) = source.commits.iter().filter_map(|c| c.quality.as_ref()).next_back() {
            println!("  {}", quality.summary());
        }
        println!(
            "run {iteration}: {elapsed:.2}s  {:.2} M rows/s  {:.0} MB/s  peak RSS {} MiB",
            rows as f64 / elapsed / 1e6,
            bytes as f64 / elapsed / 1e6,
            peak / (1 << 20)
        );
        seconds.push(elapsed);
        rss.push(peak as f64);
    }
    let secs = median(&mut seconds);
    println!(
        "median of {}: {secs:.2}s for {rows} rows ({:.0} MB {}), {:.2} M rows/s, {:.0} MB/s, peak RSS {:.0} MiB",
        args.iterations,
        bytes as f64 / 1e6,
        args.format,
        rows as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6,
        median(&mut rss) / f64::from(1 << 20)
    );
    Ok(())
}
