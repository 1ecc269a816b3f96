//! `inlet-optimize-bench`: `inlet optimize` against delta-rs' own `optimize.compact()`
//! (Python `deltalake`) on the same table, side by side.
//!
//! The bench makes, once, a Delta table of `--files` Parquet files of `--rows-per-file` rows
//! (order id, amount, status, note; pyarrow files, `convert_to_deltalake`, one commit).
//! Then, `--runs` times, alternating which goes first, it copies that table into a fresh
//! directory and compacts it with `inlet optimize` or `benches/optimize/table.py compact`, as
//! whole processes under `/usr/bin/time`; it checks that each left one version whose files
//! hold every row (untimed), and prints wall time, CPU seconds, peak RSS and files/s with
//! their medians. Last, DuckDB's `delta_scan` times a scan query over the table before and
//! after inlet's compaction.
//!
//! Needs the `inlet` binary beside this one (`cargo build --release --workspace --bins`) and
//! a virtualenv with the Python `deltalake`, pyarrow and DuckDB:
//! `python3 -m venv .venv-bench && .venv-bench/bin/pip install deltalake==1.6.6 pyarrow duckdb==1.4.4
//! duckdb-ext-delta==1.4.4.20260205`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Parser;
use inlet_benches::peer::{Measured, alternate, measured};
use serde_json::Value;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    files: u64,
    #[arg(long, default_value_t = 1_000)]
    rows_per_file: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The virtualenv holding `deltalake`, pyarrow and DuckDB.
    #[arg(long, default_value = ".venv-bench")]
    venv: PathBuf,
    /// Run inlet only.
    #[arg(long)]
    no_delta_rs: bool,
    #[arg(long, default_value = "/tmp/inlet-bench/optimize")]
    dir: PathBuf,
}

fn python(args: &Args, helper: &[&str], path: &Path) -> anyhow::Result<Command> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("optimize/table.py");
    let venv = std::path::absolute(&args.venv)?;
    let mut command = Command::new(venv.join("bin/python"));
    command.arg(script).arg(helper[0]).arg(path).args(&helper[1..]);
    Ok(command)
}

fn json_of(mut command: Command) -> anyhow::Result<Value> {
    let out = command.output().context("running the Python helper")?;
    if !out.status.success() {
        bail!("{:?} failed: {}", command, String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let inlet = std::env::current_exe()?.with_file_name("inlet");
    if !inlet.exists() {
        bail!("no inlet binary at {}: cargo build --release --workspace --bins", inlet.display());
    }
    if !args.venv.join("bin/python").exists() {
        bail!(
            "no virtualenv at {}: python3 -m venv .venv-bench && .venv-bench/bin/pip install deltalake==1.6.6 pyarrow duckdb==1.4.4 duckdb-ext-delta==1.4.4.20260205",
            args.venv.display()
        );
    }
    let base = args.dir.join(format!("base-{}x{}", args.files, args.rows_per_file));
    if !base.join("_delta_log").is_dir() {
        let _ = std::fs::remove_dir_all(&base);
        let began = std::time::Instant::now();
        let files = args.files.to_string();
        let rows = args.rows_per_file.to_string();
        let out = python(&args, &["make", &files, &rows], &base)?.output()?;
        if !out.status.success() {
            bail!("making the table: {}", String::from_utf8_lossy(&out.stderr));
        }
        eprintln!("made {} in {:.1} s", base.display(), began.elapsed().as_secs_f64());
    }
    let rows = args.files * args.rows_per_file;
    let expected_sum = rows * (rows - 1) / 2;
    let before = json_of(python(&args, &["count"], &base)?)?;
    if before["files"] != args.files || before["rows"] != rows {
        bail!("the base table holds {before}, not {} files of {} rows", args.files, args.rows_per_file);
    }
    let query_before = json_of(python(&args, &["query"], &base)?)?["seconds"].as_f64().unwrap_or_default();
    let keep = args.dir.join("compacted-by-inlet");
    alternate(
        "delta-rs",
        args.runs,
        &args.dir,
        args.no_delta_rs,
        args.files,
        "files",
        &format!("({} files of {} rows)", args.files, args.rows_per_file),
        |who, dir| {
            let table = dir.join("lake/bench/orders");
            std::fs::create_dir_all(dir.join("lake/bench"))?;
            let copied = Command::new("cp").arg("-r").arg(&base).arg(&table).status()?;
            // Written back before the timed process starts, not during it.
            if !copied.success() || !Command::new("sync").status()?.success() {
                bail!("copying the table");
            }
            let measured: Measured = if who == "inlet" {
                std::fs::write(dir.join("inlet.toml"), "[pipeline]\nname = \"optimize-bench\"\nlake = \"lake\"\n")?;
                let mut command = Command::new(&inlet);
                command.args(["optimize", "bench.orders", "--output", "json"]).env("INLET_LOG", "warn");
                let (stdout, measured) = measured(command, dir)?;
                let report: Value = serde_json::from_str(&stdout)?;
                if report["files_removed"] != args.files {
                    bail!("inlet removed {} files, not {}", report["files_removed"], args.files);
                }
                measured
            } else {
                let (stdout, measured) = measured(python(&args, &["compact"], &table)?, dir)?;
                let report: Value = serde_json::from_str(&stdout)?;
                if report["files_removed"] != args.files {
                    bail!("delta-rs removed {} files, not {}", report["files_removed"], args.files);
                }
                measured
            };
            // Untimed: one more version, every row once, a few files (two at the 100 MiB
            // target), written by both with the same codec.
            let after = json_of(python(&args, &["count"], &table)?)?;
            if after["version"] != 1
                || after["rows"] != rows
                || after["distinct"] != rows
                || after["sum"] != expected_sum
                || after["files"].as_u64().unwrap_or(u64::MAX) > 10
                || after["codecs"] != serde_json::json!(["SNAPPY"])
            {
                bail!("{who} left {after}, not {rows} rows once in a few snappy files at version 1");
            }
            println!("        {who:<8} left {} files", after["files"]);
            Ok(measured)
        },
    )?;
    // DuckDB before and after a compaction by inlet (untimed, after the runs).
    let _ = std::fs::remove_dir_all(&keep);
    std::fs::create_dir_all(keep.join("lake/bench"))?;
    let table = keep.join("lake/bench/orders");
    if !Command::new("cp").arg("-r").arg(&base).arg(&table).status()?.success() {
        bail!("copying the table");
    }
    std::fs::write(keep.join("inlet.toml"), "[pipeline]\nname = \"optimize-bench\"\nlake = \"lake\"\n")?;
    let optimized = Command::new(&inlet).args(["optimize", "bench.orders"]).current_dir(&keep).output()?;
    if !optimized.status.success() {
        bail!("inlet optimize: {}", String::from_utf8_lossy(&optimized.stderr));
    }
    let query_after = json_of(python(&args, &["query"], &table)?)?["seconds"].as_f64().unwrap_or_default();
    println!(
        "duckdb delta_scan, a scan query (best of 3): {query_before:.3} s over {} files, {query_after:.3} s after inlet optimize ({:.1}x faster)",
        args.files,
        query_before / query_after.max(1e-9)
    );
    let _ = std::fs::remove_dir_all(&keep);
    Ok(())
}
