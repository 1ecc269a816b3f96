//! `inlet-perf-bench`: inlet against the Python `deltalake` (delta-rs) on six workloads,
//! whole processes side by side.
//!
//! - **w1**: the 10M-row orders data set as CSV (40 files of 250k rows, cached under `--dir`
//!   as `inlet-e2e-bench` caches it) into a new bronze table in one commit. inlet:
//!   `inlet run` of `pipeline_toml(csv, 1000)`; delta-rs: `benches/perf/peer.py w1`, pyarrow's
//!   streaming CSV reader with inlet's hints as types, every batch into one
//!   `write_deltalake(mode="append")`. inlet's table also carries its four metadata columns
//!   (`_source_file`, `_source_row`, `_load_id`, `_ingested_at`); the peer's has none.
//! - **w1j**: the same from NDJSON (pyarrow's JSON reader with an explicit schema, `amount`
//!   read as text and cast to `decimal(18,2)`).
//! - **w2**: a merge of 1M changes (500k updates spread over all 10M orders, 500k new) into a
//!   10M-row `silver.orders` merged by `order_id`, latest `order_ts` wins. inlet: `inlet run`
//!   with the change file in the landing directory (it lands in bronze, then the merge runs,
//!   both timed); delta-rs:
//!   `peer.py w2`, the change CSV read by pyarrow and `DeltaTable.merge` (update when later,
//!   insert when new) into a copy of the same silver table.
//! - **w2dv**: w2 with `deletion_vectors = true` on `silver.orders` (turned on, untimed, in
//!   its starting lake): inlet marks the replaced rows in deletion vectors instead of
//!   rewriting their files. The peer runs w2 as it is, on w2's lake (delta-rs cannot write
//!   deletion vectors).
//! - **w3dv**: w3 with `deletion_vectors = true` on `silver.customers`, as w2dv is to w2.
//! - **w3**: SCD2 of the next day's snapshot of 1M customers (10% changed, 1% deleted, 2%
//!   new) into the `silver.customers` history inlet built from the first day. inlet: `inlet
//!   run` with the snapshot in the landing directory (bronze, then SCD2, both timed); delta-rs:
//!   `peer.py w3`, one merge of the staged-updates union (the snapshot by key closes changed
//!   rows and inserts new keys, the changed rows again with a NULL key insert their new
//!   versions, current rows of keys the snapshot lacks are closed), into a copy of the same
//!   table.
//!
//! The starting lakes of w2 and w3 are built once with inlet and cached under `--dir`; each
//! run starts from a hard-linked copy (Delta files are immutable). Runs alternate which goes
//! first, `--runs` times, each after a `sync` (with `--cold` the page cache is dropped too, which needs root), under
//! `/usr/bin/time`: wall time, CPU-seconds (user + sys) and peak RSS. Every run's table is
//! read back afterwards (untimed, DuckDB's `delta_scan` of the latest version, deletion vectors applied): its rows, current
//! rows (w3) and an order-free digest of its data columns, which must be the same for inlet
//! and delta-rs. The peer writes with inlet's table-wide Parquet encoding (Snappy, 256k-row
//! groups, chunk statistics) and inlet's 128 MiB target file size; inlet's choices per column
//! (no dictionary for nearly unique values, delta encoding for ascending integers) are its own.
//!
//! Before each workload it prints its floors, in process, on one thread: finding the records
//! and fields of the workload's CSV input, by the `csv` crate (nothing copied out) and by
//! inlet's SIMD scanner (what inlet reads these files with, so the floor), and Arrow's Parquet writer encoding its rows, typed as inlet types them, with inlet's writer
//! properties into nothing (`--no-floors` skips them). w1j shows w1's, and serde_json
//! finding the fields of the NDJSON records (what NDJSON costs beyond CSV before decoding).
//! For comparison, not as floors, w1 and w1j also time Arrow's own readers (arrow-csv,
//! arrow-json) decoding the same rows to the same types. At the end, a table of the medians,
//! inlet's over delta-rs', and the targets they are held to.
//!
//! Needs the `inlet` binary beside this one (`cargo build --release --workspace --bins`,
//! then `inlet-perf-bench` from the release directory) and a virtualenv with
//! `deltalake==1.6.6 pyarrow duckdb==1.4.4 duckdb-ext-delta==1.4.4.20260205` (`--venv`,
//! `.venv-bench` by default).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, bail};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use clap::Parser;
use inlet_benches::peer::{Measured, alternate, measured};
use inlet_benches::{
    Format, MERGE_PIPELINE, SCD2_PIPELINE, cached_orders, csv_fields, json_fields, link_tree, median, pipeline_toml,
    write_customers, write_file, write_order_changes,
};
use inlet_connectors::csv::CsvFormat;
use inlet_engine::config::{CsvOptions, OnNewColumns};
use inlet_engine::conform::{ChunkOrigin, ConformSpec, TableColumns, conform};
use inlet_engine::run::RunOptions;
use inlet_engine::schema::{ColumnType, Provenance};
use inlet_engine::source::{DecodeOptions, Format as _, Input};
use inlet_engine::table::file_writer_properties;
use parquet::arrow::ArrowWriter;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// Workloads to run, comma-separated: w1, w1j, w2, w2dv, w3, w3dv.
    #[arg(long, default_value = "w1,w1j,w2,w2dv,w3,w3dv")]
    workload: String,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where inputs and starting lakes are cached and runs are made.
    #[arg(long, default_value = "/tmp/inlet-bench")]
    dir: PathBuf,
    /// The virtualenv holding `deltalake`, pyarrow and DuckDB (the checks need it too).
    #[arg(long, default_value = ".venv-bench")]
    venv: PathBuf,
    /// Run inlet only.
    #[arg(long)]
    inlet_only: bool,
    /// Skip the in-process floors.
    #[arg(long)]
    no_floors: bool,
    /// Drop the page cache (`/proc/sys/vm/drop_caches`, needs root) before every timed run,
    /// so both read their input from disk.
    #[arg(long)]
    cold: bool,
}

const FILES: u64 = 40;
const ROWS_PER_FILE: u64 = 250_000;
const ROWS: u64 = FILES * ROWS_PER_FILE;
/// The merge's change batch: half updates of existing orders, half new ones.
const CHANGES: u64 = 1_000_000;
const CUSTOMERS: u64 = 1_000_000;
const PEER: &str = "delta-rs";

const ORDER_COLUMNS: &str = "order_id,customer_id,order_ts,amount,currency,status,country,note";
const CUSTOMER_COLUMNS: &str =
    "customer_id,tier,city,email,segment,snapshot_at,_valid_from,_valid_to,_is_current,_row_hash";
const ORDER_HINTS: [(&str, &str); 4] =
    [("order_id", "bigint"), ("customer_id", "bigint"), ("order_ts", "timestamp"), ("amount", "decimal(18,2)")];
const CUSTOMER_HINTS: [(&str, &str); 2] = [("customer_id", "bigint"), ("snapshot_at", "timestamp")];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    W1,
    W1j,
    W2,
    W2dv,
    W3,
    W3dv,
}

/// What inlet is held to on a workload: its wall time and CPU over the peer's, its peak RSS.
#[derive(Debug, Clone, Copy, Default)]
struct Target {
    wall: Option<f64>,
    cpu: Option<f64>,
    rss_mib: Option<f64>,
}

impl Workload {
    fn parse(name: &str) -> anyhow::Result<Workload> {
        Ok(match name.trim() {
            "w1" => Workload::W1,
            "w1j" => Workload::W1j,
            "w2" => Workload::W2,
            "w2dv" => Workload::W2dv,
            "w3" => Workload::W3,
            "w3dv" => Workload::W3dv,
            other => bail!("unknown workload `{other}` (w1, w1j, w2, w2dv, w3, w3dv)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Workload::W1 => "w1",
            Workload::W1j => "w1j",
            Workload::W2 => "w2",
            Workload::W2dv => "w2dv",
            Workload::W3 => "w3",
            Workload::W3dv => "w3dv",
        }
    }

    fn target(self) -> Target {
        match self {
            Workload::W1 => Target { wall: Some(0.5), cpu: Some(0.5), rss_mib: Some(256.0) },
            Workload::W1j => Target { wall: Some(0.6), ..Target::default() },
            Workload::W2 => Target { wall: Some(0.8), ..Target::default() },
            Workload::W2dv => Target { wall: Some(0.3), rss_mib: Some(600.0), ..Target::default() },
            Workload::W3 | Workload::W3dv => Target { wall: Some(0.2), rss_mib: Some(512.0), ..Target::default() },
        }
    }
}

/// The medians of one workload's runs, and whether every run left the same rows.
struct Outcome {
    workload: Workload,
    inlet: Option<Measured>,
    peer: Option<Measured>,
    same_end_state: bool,
}

impl Outcome {
    fn new(workload: Workload, results: &[(String, Measured)], digests: &[String]) -> Outcome {
        let same_end_state = !digests.is_empty() && digests.iter().all(|d| *d == digests[0]);
        if same_end_state {
            println!("end state: the same rows after every run (digest {})", digests[0]);
        } else {
            println!("END STATES DIFFER between runs: {digests:?}");
        }
        Outcome { workload, inlet: medians_of(results, "inlet"), peer: medians_of(results, PEER), same_end_state }
    }
}

/// The median wall time, CPU and peak RSS of `who`'s runs.
fn medians_of(results: &[(String, Measured)], who: &str) -> Option<Measured> {
    let runs: Vec<Measured> = results.iter().filter(|(w, _)| w.as_str() == who).map(|(_, m)| *m).collect();
    if runs.is_empty() {
        return None;
    }
    let of = |f: fn(&Measured) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        median(&mut values)
    };
    Some(Measured { wall: of(|m| m.wall), cpu: of(|m| m.cpu), rss_mib: of(|m| m.rss_mib) })
}

/// The binaries, the scratch directory and the settings every workload shares.
struct Bench {
    inlet: PathBuf,
    python: PathBuf,
    script: PathBuf,
    dir: PathBuf,
    runs: usize,
    inlet_only: bool,
}

impl Bench {
    /// `inlet ARGS`, logging warnings only.
    fn inlet(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.inlet);
        command.args(args).env("INLET_LOG", "warn");
        command
    }

    /// `peer.py COMMAND`.
    fn peer(&self, command: &str) -> Command {
        let mut out = Command::new(&self.python);
        out.arg(&self.script).arg(command);
        out
    }

    /// Reads `table` back (untimed): bails unless it holds `rows` rows (`current` of them
    /// current, for SCD2), and adds its digest of `columns` to `digests`.
    fn check_end_state(
        &self,
        who: &str,
        table: &Path,
        columns: &str,
        rows: u64,
        current: Option<u64>,
        digests: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let mut command = self.peer("digest");
        command.arg("--table").arg(table).arg("--columns").arg(columns);
        let state = last_json(&untimed(command, &self.dir)?)?;
        if state["rows"] != rows {
            bail!("{who} left {state}, not {rows} rows");
        }
        if let Some(current) = current
            && state["current"] != current
        {
            bail!("{who} left {state}, not {current} current rows");
        }
        let digest = state["digest"].as_str().unwrap_or_default().to_owned();
        println!("        {who:<8} left {} rows at version {}, digest {digest}", state["rows"], state["version"]);
        digests.push(digest);
        Ok(())
    }
}

/// Runs `command` in `dir` to its end, untimed; its stdout.
fn untimed(mut command: Command, dir: &Path) -> anyhow::Result<String> {
    command.current_dir(dir);
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The last line of `stdout` that is a JSON object.
fn last_json(stdout: &str) -> anyhow::Result<Value> {
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("no JSON report in: {stdout}"))
}

/// Whether timed runs start with a cold page cache (`--cold`).
static COLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Written back to disk before a timed process starts, not during it; with `--cold`, the
/// page cache dropped too.
fn sync() -> anyhow::Result<()> {
    if !Command::new("sync").status()?.success() {
        bail!("sync failed");
    }
    if COLD.load(std::sync::atomic::Ordering::Relaxed) {
        std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (--cold needs root)")?;
    }
    Ok(())
}

/// The 40 x 250k orders files in `format`, generated once, where `inlet-e2e-bench` keeps them.
fn landing(dir: &Path, format: Format) -> anyhow::Result<PathBuf> {
    Ok(cached_orders(dir, format, FILES, ROWS_PER_FILE)?.0)
}

/// The data files of a landing directory, in name order.
fn landing_files(landing: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(landing)? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// The starting lake of w2: the orders in bronze and a 10M-row `silver.orders` merged from
/// them, and `change.csv` beside them; built once.
fn merge_template(bench: &Bench, csv_landing: &Path) -> anyhow::Result<PathBuf> {
    let template = bench.dir.join("perf-w2-template");
    if template.join(".done").exists() {
        return Ok(template);
    }
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(&template);
    std::fs::create_dir_all(template.join("landing"))?;
    for file in landing_files(csv_landing)? {
        let to = template.join("landing").join(file.file_name().context("no file name")?);
        if std::fs::hard_link(&file, &to).is_err() {
            std::fs::copy(&file, &to)?;
        }
    }
    std::fs::write(template.join("inlet.toml"), MERGE_PIPELINE)?;
    write_file(&template.join("change.csv"), |out| {
        write_order_changes(out, 7, ROWS, ROWS, CHANGES / 2, CHANGES - CHANGES / 2)
    })?;
    untimed(bench.inlet(&["run", "inlet.toml"]), &template)?;
    std::fs::write(template.join(".done"), b"")?;
    // w2dv's starting lake was made from the one this replaces.
    let _ = std::fs::remove_dir_all(bench.dir.join("perf-w2dv-template"));
    eprintln!("built the w2 starting lake in {:.1}s", started.elapsed().as_secs_f64());
    Ok(template)
}

/// The starting lake of w2dv or w3dv (`name`): `from`'s, with deletion vectors turned on for
/// `table` by an untimed run of `pipeline` with `deletion_vectors = true` (nothing else
/// changes); built once.
fn dv_template(bench: &Bench, from: &Path, name: &str, pipeline: &str, table: &str) -> anyhow::Result<PathBuf> {
    let template = bench.dir.join(format!("perf-{name}-template"));
    if template.join(".done").exists() {
        return Ok(template);
    }
    let _ = std::fs::remove_dir_all(&template);
    link_tree(from, &template)?;
    let _ = std::fs::remove_file(template.join(".done"));
    // A new file, not a write through the link into the other template's.
    std::fs::remove_file(template.join("inlet.toml"))?;
    std::fs::write(template.join("inlet.toml"), format!("{pipeline}deletion_vectors = true\n"))?;
    untimed(bench.inlet(&["run", "inlet.toml"]), &template)?;
    if !commits(&template.join(table))?.iter().any(|commit| commit.contains("\"deletionVectors\"")) {
        bail!("the {name} starting lake's {table} did not turn deletion vectors on");
    }
    std::fs::write(template.join(".done"), b"")?;
    Ok(template)
}

/// The JSON commits of the table at `table`, oldest first.
fn commits(table: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(table.join("_delta_log"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    // Commit file names are zero-padded versions.
    names.sort();
    names.iter().map(|path| Ok(std::fs::read_to_string(path)?)).collect()
}

/// That inlet's run on `table` worked as `workload` means: its newest commit adds files with
/// deletion vectors for w2dv and w3dv, none for the others (or the numbers would be the
/// other strategy's under this one's name).
fn check_strategy(workload: Workload, table: &Path) -> anyhow::Result<()> {
    let marks = matches!(workload, Workload::W2dv | Workload::W3dv);
    let newest = commits(table)?.pop().unwrap_or_default();
    if newest.contains("\"deletionVector\":{") != marks {
        bail!(
            "inlet's {} run {} deletion vectors in {}'s newest commit",
            workload.name(),
            if marks { "wrote no" } else { "wrote" },
            table.display()
        );
    }
    Ok(())
}

/// The starting lake of w3: day 0's customers in bronze and the SCD2 `silver.customers`
/// built from them, and `day1.csv` beside them; built once.
fn scd2_template(bench: &Bench) -> anyhow::Result<PathBuf> {
    let template = bench.dir.join("perf-w3-template");
    if template.join(".done").exists() {
        return Ok(template);
    }
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(&template);
    std::fs::create_dir_all(template.join("landing"))?;
    std::fs::write(template.join("inlet.toml"), SCD2_PIPELINE)?;
    write_file(&template.join("landing/day0.csv"), |out| write_customers(out, 0, CUSTOMERS))?;
    write_file(&template.join("day1.csv"), |out| write_customers(out, 1, CUSTOMERS))?;
    untimed(bench.inlet(&["run", "inlet.toml"]), &template)?;
    std::fs::write(template.join(".done"), b"")?;
    // w3dv's starting lake was made from the one this replaces.
    let _ = std::fs::remove_dir_all(bench.dir.join("perf-w3dv-template"));
    eprintln!("built the w3 starting lake in {:.1}s", started.elapsed().as_secs_f64());
    Ok(template)
}

/// w1 and w1j: the landing directory into a new bronze table.
fn ingest(bench: &Bench, workload: Workload, format: Format, landing: &Path) -> anyhow::Result<Outcome> {
    let mut results: Vec<(String, Measured)> = Vec::new();
    let mut digests: Vec<String> = Vec::new();
    alternate(
        PEER,
        bench.runs,
        &bench.dir.join(format!("perf-{}", workload.name())),
        bench.inlet_only,
        ROWS,
        "rows",
        &format!("({FILES} files of {ROWS_PER_FILE} rows, one commit)"),
        |who, dir| {
            let table = dir.join("lake/bronze/orders");
            let measured = if who == "inlet" {
                std::fs::write(dir.join("inlet.toml"), pipeline_toml(format, 1000))?;
                std::os::unix::fs::symlink(landing, dir.join("landing"))?;
                sync()?;
                measured(bench.inlet(&["run", "inlet.toml"]), dir)?.1
            } else {
                let mut command = bench.peer(workload.name());
                command.arg("--landing").arg(landing).arg("--table").arg(&table);
                sync()?;
                let (stdout, measured) = measured(command, dir)?;
                let report = last_json(&stdout)?;
                if report["rows"] != ROWS {
                    bail!("{PEER} wrote {report}, not {ROWS} rows");
                }
                measured
            };
            bench.check_end_state(who, &table, ORDER_COLUMNS, ROWS, None, &mut digests)?;
            results.push((who.to_owned(), measured));
            Ok(measured)
        },
    )?;
    Ok(Outcome::new(workload, &results, &digests))
}

/// w2 and w2dv: the change batch merged into `silver.orders`; inlet starts from `template`,
/// the peer from `peer_template` (w2's: delta-rs does not write to a table with deletion
/// vectors on).
fn merge(bench: &Bench, workload: Workload, template: &Path, peer_template: &Path) -> anyhow::Result<Outcome> {
    let (updates, new) = (CHANGES / 2, CHANGES - CHANGES / 2);
    let rows = ROWS + new;
    let mut results: Vec<(String, Measured)> = Vec::new();
    let mut digests: Vec<String> = Vec::new();
    alternate(
        PEER,
        bench.runs,
        &bench.dir.join(format!("perf-{}", workload.name())),
        bench.inlet_only,
        CHANGES,
        "changes",
        &format!("({updates} updates over all {ROWS} rows, {new} new)"),
        |who, dir| {
            let lake = dir.join("lake-copy");
            link_tree(if who == "inlet" { template } else { peer_template }, &lake)?;
            let table = lake.join("lake/silver/orders");
            let measured = if who == "inlet" {
                // Timed as the peer is: from the change file to the merged table (its
                // landing in bronze, then the merge).
                std::fs::copy(lake.join("change.csv"), lake.join("landing/zz-change.csv"))?;
                sync()?;
                let measured = measured(bench.inlet(&["run", "inlet.toml"]), &lake)?.1;
                check_strategy(workload, &table)?;
                measured
            } else {
                let mut command = bench.peer("w2");
                command.arg("--table").arg(&table).arg("--changes").arg(lake.join("change.csv"));
                sync()?;
                let (stdout, measured) = measured(command, &lake)?;
                let report = last_json(&stdout)?;
                if report["source_rows"] != CHANGES || report["updated"] != updates || report["inserted"] != new {
                    bail!("{PEER} merged {report}, not {updates} updates and {new} inserts");
                }
                measured
            };
            bench.check_end_state(who, &table, ORDER_COLUMNS, rows, None, &mut digests)?;
            results.push((who.to_owned(), measured));
            Ok(measured)
        },
    )?;
    Ok(Outcome::new(workload, &results, &digests))
}

/// w3 and w3dv: the next day's snapshot into the SCD2 `silver.customers`; inlet starts from
/// `template`, the peer from `peer_template` (w3's), as for w2dv.
fn scd2(bench: &Bench, workload: Workload, template: &Path, peer_template: &Path) -> anyhow::Result<Outcome> {
    // As `write_customers` makes day 1: ids ending in 1 change, multiples of 100 go, and
    // 2% new ids come (multiples of 100 among them skipped too).
    let changed = (1..=CUSTOMERS).filter(|id| id % 10 == 1).count() as u64;
    let deleted = (1..=CUSTOMERS).filter(|id| id % 100 == 0).count() as u64;
    let new = (CUSTOMERS + 1..=CUSTOMERS + CUSTOMERS / 50).filter(|id| id % 100 != 0).count() as u64;
    let (rows, current) = (CUSTOMERS + changed + new, CUSTOMERS - deleted + new);
    let mut results: Vec<(String, Measured)> = Vec::new();
    let mut digests: Vec<String> = Vec::new();
    alternate(
        PEER,
        bench.runs,
        &bench.dir.join(format!("perf-{}", workload.name())),
        bench.inlet_only,
        CUSTOMERS,
        "keys",
        &format!("({changed} changed, {deleted} deleted, {new} new)"),
        |who, dir| {
            let lake = dir.join("lake-copy");
            link_tree(if who == "inlet" { template } else { peer_template }, &lake)?;
            let table = lake.join("lake/silver/customers");
            let measured = if who == "inlet" {
                // From the snapshot file to the history, as the peer is timed.
                std::fs::copy(lake.join("day1.csv"), lake.join("landing/day1.csv"))?;
                sync()?;
                let measured = measured(bench.inlet(&["run", "inlet.toml"]), &lake)?.1;
                check_strategy(workload, &table)?;
                measured
            } else {
                let mut command = bench.peer("w3");
                command.arg("--table").arg(&table).arg("--snapshot").arg(lake.join("day1.csv"));
                sync()?;
                let (stdout, measured) = measured(command, &lake)?;
                let report = last_json(&stdout)?;
                if report["changed"] != changed {
                    bail!("{PEER} found {report}, not {changed} changed keys");
                }
                measured
            };
            bench.check_end_state(who, &table, CUSTOMER_COLUMNS, rows, Some(current), &mut digests)?;
            results.push((who.to_owned(), measured));
            Ok(measured)
        },
    )?;
    Ok(Outcome::new(workload, &results, &digests))
}

/// Wall and CPU time spent in measured spans.
#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    wall: f64,
    cpu: f64,
}

/// CPU-seconds this thread has used: utime + stime of `/proc/thread-self/stat`, in clock
/// ticks taken as 100 a second (Linux's USER_HZ; asking `sysconf` would take unsafe code).
fn thread_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    // The command name, in parentheses, may hold spaces: count fields after it (field 3 on).
    let (_, rest) = stat.rsplit_once(')').context("unexpected /proc/thread-self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |field: usize| -> anyhow::Result<u64> {
        fields.get(field - 3).and_then(|f| f.parse().ok()).context("no utime or stime in /proc/thread-self/stat")
    };
    Ok((ticks(14)? + ticks(15)?) as f64 / 100.0)
}

/// Runs `f`, adding its wall and CPU time (this thread's) to `spent`.
fn timed<T>(spent: &mut Spent, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let (wall, cpu) = (Instant::now(), thread_cpu_seconds()?);
    let out = f()?;
    spent.wall += wall.elapsed().as_secs_f64();
    spent.cpu += thread_cpu_seconds()? - cpu;
    Ok(out)
}

/// The `csv` crate finding the records and fields of `files`, copying nothing out: the CSV
/// decoder's floor. Checks it found `records` records (headers included) of `columns` fields.
fn csv_floor(files: &[PathBuf], records: u64, columns: u64) -> anyhow::Result<Spent> {
    let mut spent = Spent::default();
    let mut fields = 0u64;
    timed(&mut spent, || {
        for path in files {
            fields += csv_fields(std::fs::File::open(path)?)?;
        }
        Ok(())
    })?;
    if fields != records * columns {
        bail!("the csv crate found {fields} fields, not {records} records of {columns}");
    }
    Ok(spent)
}

/// inlet's CSV reader (its SIMD scanner, with the default options) finding the records and
/// fields of `files`, as [`csv_floor`] does with the csv crate.
fn scanner_floor(files: &[PathBuf], records: u64, columns: u64) -> anyhow::Result<Spent> {
    let mut spent = Spent::default();
    let mut fields = 0u64;
    timed(&mut spent, || {
        for path in files {
            fields +=
                inlet_connectors::csv::count_fields(Box::new(std::fs::File::open(path)?), &CsvOptions::default())?;
        }
        Ok(())
    })?;
    if fields != records * columns {
        bail!("inlet's scanner found {fields} fields, not {records} records of {columns}");
    }
    Ok(spent)
}

/// Arrow's Parquet writer encoding the rows of `files`, decoded and typed as inlet's CSV
/// source types them (not measured), with the writer properties inlet chooses for the file (per column, from its first batch), one file per input
/// file, into nothing. `metadata` keeps inlet's metadata columns (a bronze table's rows).
/// Returns the time spent encoding and the rows encoded.
fn encode_floor(files: &[PathBuf], hints: &[(&str, &str)], metadata: bool) -> anyhow::Result<(Spent, u64)> {
    /// Rows decoded before they are encoded in one measured span (a row group's worth).
    const ROWS_PER_SPAN: usize = 256 * 1024;
    let hints = hints
        .iter()
        .map(|(column, name)| -> anyhow::Result<(String, DataType)> {
            let ColumnType(data_type) = ColumnType::parse(name).map_err(anyhow::Error::msg)?;
            Ok(((*column).to_owned(), data_type))
        })
        .collect::<anyhow::Result<HashMap<String, DataType>>>()?;
    let spec = ConformSpec {
        source_name: "floor".into(),
        table: "bronze.floor".into(),
        hints,
        on_new_columns: OnNewColumns::Add,
    };
    let format = CsvFormat::new(CsvOptions::default());
    let columns = Mutex::new(TableColumns::new_table(OnNewColumns::Add, Provenance::Files));
    let mut options = DecodeOptions::text(RunOptions::default().rows_per_chunk);
    options.types = spec.hints.clone();
    let (mut spent, mut rows) = (Spent::default(), 0u64);
    for path in files {
        let unit = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let origin = ChunkOrigin {
            unit: &unit,
            page: None,
            load_id: "01a242b5-0881-733a-b0c9-f7bda06c5f58",
            ingested_at_micros: 1_735_689_600_000_000,
        };
        let mut decoder = format.decoder(Input::File(std::fs::File::open(path)?), &options)?;
        let mut writer: Option<ArrowWriter<std::io::Sink>> = None;
        let mut pending: Vec<RecordBatch> = Vec::new();
        let mut pending_rows = 0usize;
        loop {
            let chunk = decoder.next_chunk()?;
            let done = chunk.is_none();
            if let Some(chunk) = chunk {
                let conformed = conform(chunk, &spec, &columns, &origin)?;
                if !conformed.bad.is_empty() {
                    bail!("{} records of {} do not parse", conformed.bad.len(), path.display());
                }
                let mut batch = conformed.batch;
                if !metadata {
                    let data: Vec<usize> = (0..batch.num_columns())
                        .filter(|&i| !batch.schema().field(i).name().starts_with('_'))
                        .collect();
                    batch = batch.project(&data)?;
                }
                pending_rows += batch.num_rows();
                pending.push(batch);
            }
            if pending_rows >= ROWS_PER_SPAN || (done && !pending.is_empty()) {
                let batches = std::mem::take(&mut pending);
                rows += pending_rows as u64;
                pending_rows = 0;
                timed(&mut spent, || {
                    for batch in &batches {
                        if writer.is_none() {
                            let properties = file_writer_properties(batch);
                            writer = Some(ArrowWriter::try_new(std::io::sink(), batch.schema(), Some(properties))?);
                        }
                        if let Some(writer) = writer.as_mut() {
                            writer.write(batch)?;
                        }
                    }
                    Ok(())
                })?;
            }
            if done {
                break;
            }
        }
        if let Some(writer) = writer.take() {
            timed(&mut spent, || {
                writer.close()?;
                Ok(())
            })?;
        }
    }
    Ok((spent, rows))
}

/// Measures and prints the floors of `files` (`rows` records of `columns` fields, one
/// header each): CPU-seconds, wall time on one thread, CPU-seconds per 10M rows. Returns the
/// scanner's time.
fn floors(
    what: &str,
    files: &[PathBuf],
    rows: u64,
    columns: u64,
    hints: &[(&str, &str)],
    metadata: bool,
) -> anyhow::Result<Spent> {
    let csv = csv_floor(files, rows + files.len() as u64, columns)?;
    let scanner = scanner_floor(files, rows + files.len() as u64, columns)?;
    let (encode, encoded) = encode_floor(files, hints, metadata)?;
    if encoded != rows {
        bail!("encoded {encoded} rows, not {rows}");
    }
    let per_10m = |cpu: f64| cpu * 1e7 / rows as f64;
    println!("floors of {what} ({rows} rows; in process, one thread; CPU from /proc at 100 ticks/s):");
    println!(
        "floor  csv crate, records and fields   {:>7.2} CPU-s  {:>7.2} s  {:>7.2} CPU-s per 10M rows",
        csv.cpu,
        csv.wall,
        per_10m(csv.cpu)
    );
    println!(
        "floor  inlet's SIMD scanner, the same  {:>7.2} CPU-s  {:>7.2} s  {:>7.2} CPU-s per 10M rows",
        scanner.cpu,
        scanner.wall,
        per_10m(scanner.cpu)
    );
    println!(
        "floor  parquet encode, inlet's props   {:>7.2} CPU-s  {:>7.2} s  {:>7.2} CPU-s per 10M rows",
        encode.cpu,
        encode.wall,
        per_10m(encode.cpu)
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // With the default options, and no `\r` in these files, inlet reads them with its scanner.
    println!(
        "floor  together (scanner and encode) {:.2} CPU-s: at best {:.2} s wall on {cores} cores",
        scanner.cpu + encode.cpu,
        (scanner.cpu + encode.cpu) / cores as f64
    );
    Ok(scanner)
}

/// serde_json finding the fields of the NDJSON `files` beside inlet's scanner finding those
/// of the same rows as CSV (`scanned`, measured by [`floors`]): how much more CPU NDJSON takes
/// before any decoding, per 10M rows, and so the least ratio of W1j's CPU to W1's.
fn json_floor(files: &[PathBuf], scanned: Spent) -> anyhow::Result<()> {
    let mut json = Spent::default();
    let mut fields = 0u64;
    timed(&mut json, || {
        for path in files {
            fields += json_fields(std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?))?;
        }
        Ok(())
    })?;
    if fields != ROWS * 8 {
        bail!("serde_json found {fields} fields, not {ROWS} records of 8");
    }
    let per_10m = |cpu: f64| cpu * 1e7 / ROWS as f64;
    println!("floors of the orders as NDJSON ({ROWS} rows; in process, one thread):");
    println!(
        "floor  serde_json, records and fields  {:>7.2} CPU-s  {:>7.2} s  {:>7.2} CPU-s per 10M rows",
        json.cpu,
        json.wall,
        per_10m(json.cpu)
    );
    println!(
        "floor  NDJSON over CSV: {:+.2} CPU-s per 10M rows before any decoding (inlet's scanner: {:.2})",
        per_10m(json.cpu - scanned.cpu),
        per_10m(scanned.cpu)
    );
    Ok(())
}

/// Arrow's own reader of `format` (arrow-csv or arrow-json) decoding `files` into the
/// orders' columns typed as inlet types them (the hints; text for the rest), in chunks as
/// big as inlet's, batches let go: what decoding to those types costs where Arrow does it.
fn arrow_decode(files: &[PathBuf], format: Format) -> anyhow::Result<Spent> {
    let mut fields: Vec<arrow::datatypes::Field> = Vec::new();
    for name in ORDER_COLUMNS.split(',') {
        let data_type = match ORDER_HINTS.iter().find(|(column, _)| *column == name) {
            Some((_, hint)) => ColumnType::parse(hint).map_err(anyhow::Error::msg)?.0,
            None => DataType::Utf8,
        };
        fields.push(arrow::datatypes::Field::new(name, data_type, true));
    }
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
    let rows_per_chunk = RunOptions::default().rows_per_chunk;
    let mut spent = Spent::default();
    let mut rows = 0u64;
    timed(&mut spent, || {
        for path in files {
            let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
            let batches: Box<dyn Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>>> = match format {
                Format::Csv => Box::new(
                    arrow_csv::ReaderBuilder::new(schema.clone())
                        .with_header(true)
                        .with_batch_size(rows_per_chunk)
                        .build_buffered(file)?,
                ),
                Format::Ndjson => Box::new(
                    arrow_json::ReaderBuilder::new(schema.clone()).with_batch_size(rows_per_chunk).build(file)?,
                ),
            };
            for batch in batches {
                rows += batch.with_context(|| format!("arrow decoding {}", path.display()))?.num_rows() as u64;
            }
        }
        Ok(())
    })?;
    if rows != ROWS {
        bail!("Arrow decoded {rows} rows, not {ROWS}");
    }
    Ok(spent)
}

/// Prints [`arrow_decode`]'s time for `format`: not a floor, a point of comparison for
/// inlet's decoder (Arrow's reader with the floor's Parquet encoding is a pipeline with
/// nothing of inlet's in it).
fn arrow_compare(files: &[PathBuf], format: Format) -> anyhow::Result<()> {
    let spent = arrow_decode(files, format)?;
    let reader = match format {
        Format::Csv => "arrow-csv, typed decode ",
        Format::Ndjson => "arrow-json, typed decode",
    };
    println!(
        "compare {reader}       {:>7.2} CPU-s  {:>7.2} s  {:>7.2} CPU-s per 10M rows (Arrow's own reader, the same types)",
        spent.cpu,
        spent.wall,
        spent.cpu * 1e7 / ROWS as f64
    );
    Ok(())
}

/// `0.62 (<=0.50 missed)`: a ratio and its target.
fn ratio_cell(inlet: f64, peer: Option<&Measured>, of: fn(&Measured) -> f64, target: Option<f64>) -> String {
    let ratio = peer.map(|p| inlet / of(p));
    match (ratio, target) {
        (Some(ratio), Some(target)) => {
            format!("{ratio:.2} (<={target:.2} {})", if ratio <= target { "met" } else { "missed" })
        }
        (Some(ratio), None) => format!("{ratio:.2}"),
        (None, Some(target)) => format!("- (<={target:.2})"),
        (None, None) => "-".to_owned(),
    }
}

fn print_summary(outcomes: &[Outcome], runs: usize) {
    println!();
    println!("summary: medians of {runs} runs; ratios are inlet / {PEER} (lower is better), with the targets");
    println!(
        "{:<4} {:>8} {:>7} {:>6}  {:>8} {:>7} {:>6}  {:<22} {:<22} {:<6} {:<18} same rows",
        "", "inlet s", "CPU-s", "MiB", "peer s", "CPU-s", "MiB", "wall ratio", "CPU ratio", "RSS", "inlet RSS",
    );
    for outcome in outcomes {
        let target = outcome.workload.target();
        let Some(inlet) = outcome.inlet else { continue };
        let peer = outcome.peer.as_ref();
        let cell = |f: fn(&Measured) -> f64, precision: usize| {
            peer.map_or_else(|| "-".to_owned(), |p| format!("{:.precision$}", f(p)))
        };
        let rss = match target.rss_mib {
            Some(limit) => {
                format!("{:.0} (<={limit:.0} {})", inlet.rss_mib, if inlet.rss_mib <= limit { "met" } else { "missed" })
            }
            None => format!("{:.0}", inlet.rss_mib),
        };
        println!(
            "{:<4} {:>8.2} {:>7.2} {:>6.0}  {:>8} {:>7} {:>6}  {:<22} {:<22} {:<6} {:<18} {}",
            outcome.workload.name(),
            inlet.wall,
            inlet.cpu,
            inlet.rss_mib,
            cell(|m| m.wall, 2),
            cell(|m| m.cpu, 2),
            cell(|m| m.rss_mib, 0),
            ratio_cell(inlet.wall, peer, |m| m.wall, target.wall),
            ratio_cell(inlet.cpu, peer, |m| m.cpu, target.cpu),
            ratio_cell(inlet.rss_mib, peer, |m| m.rss_mib, None),
            rss,
            if outcome.same_end_state { "yes" } else { "NO" }
        );
    }
    if outcomes.iter().any(|o| matches!(o.workload, Workload::W2dv | Workload::W3dv)) {
        println!(
            "w2, w3: inlet rewrites the files holding changed rows; w2dv, w3dv: it marks them in deletion vectors"
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    COLD.store(args.cold, std::sync::atomic::Ordering::Relaxed);
    let workloads = args.workload.split(',').map(Workload::parse).collect::<anyhow::Result<Vec<_>>>()?;
    let inlet = std::env::current_exe()?.with_file_name("inlet");
    if !inlet.exists() {
        bail!("no inlet binary at {}: cargo build --release --workspace --bins", inlet.display());
    }
    let python = std::path::absolute(&args.venv)?.join("bin/python");
    if !python.exists() {
        bail!(
            "no virtualenv at {}: python3 -m venv .venv-bench && .venv-bench/bin/pip install deltalake==1.6.6 pyarrow duckdb==1.4.4 duckdb-ext-delta==1.4.4.20260205",
            args.venv.display()
        );
    }
    let dir = std::path::absolute(&args.dir)?;
    std::fs::create_dir_all(&dir)?;
    let bench = Bench {
        inlet,
        python,
        script: Path::new(env!("CARGO_MANIFEST_DIR")).join("perf/peer.py"),
        dir,
        runs: args.runs,
        inlet_only: args.inlet_only,
    };
    let versions = last_json(&untimed(bench.peer("versions"), &bench.dir)?)?;
    let version = |name: &str| versions[name].as_str().unwrap_or("?").to_owned();
    println!(
        "peer: {PEER}, the Python deltalake {} with pyarrow {}; tables read back with DuckDB {}",
        version("deltalake"),
        version("pyarrow"),
        version("duckdb")
    );
    let mut outcomes = Vec::new();
    // The scanner's time on the orders as CSV, once measured: what NDJSON is set against.
    let mut orders_scanned: Option<Spent> = None;
    for workload in workloads {
        println!();
        println!("== {} ==", workload.name());
        let outcome = match workload {
            Workload::W1 | Workload::W1j => {
                let scanned = match orders_scanned {
                    _ if args.no_floors => None,
                    Some(scanned) => {
                        println!("floors: the CSV floors above (the same rows)");
                        Some(scanned)
                    }
                    None => {
                        let csv = landing_files(&landing(&bench.dir, Format::Csv)?)?;
                        let scanned = floors("the orders as CSV", &csv, ROWS, 8, &ORDER_HINTS, true)?;
                        arrow_compare(&csv, Format::Csv)?;
                        orders_scanned = Some(scanned);
                        Some(scanned)
                    }
                };
                let format = if workload == Workload::W1 { Format::Csv } else { Format::Ndjson };
                if let (Format::Ndjson, Some(scanned)) = (format, scanned) {
                    let ndjson = landing_files(&landing(&bench.dir, Format::Ndjson)?)?;
                    json_floor(&ndjson, scanned)?;
                    arrow_compare(&ndjson, Format::Ndjson)?;
                }
                let landing = landing(&bench.dir, format)?;
                ingest(&bench, workload, format, &landing)?
            }
            Workload::W2 => {
                let template = merge_template(&bench, &landing(&bench.dir, Format::Csv)?)?;
                if !args.no_floors {
                    floors("the change batch", &[template.join("change.csv")], CHANGES, 8, &ORDER_HINTS, false)?;
                }
                merge(&bench, Workload::W2, &template, &template)?
            }
            Workload::W2dv => {
                let w2 = merge_template(&bench, &landing(&bench.dir, Format::Csv)?)?;
                let template = dv_template(&bench, &w2, "w2dv", MERGE_PIPELINE, "lake/silver/orders")?;
                merge(&bench, Workload::W2dv, &template, &w2)?
            }
            Workload::W3 => {
                let template = scd2_template(&bench)?;
                if !args.no_floors {
                    let snapshot = template.join("day1.csv");
                    let records = std::fs::read(&snapshot)?.iter().filter(|&&b| b == b'\n').count() as u64 - 1;
                    floors("the day-1 snapshot", &[snapshot], records, 6, &CUSTOMER_HINTS, false)?;
                }
                scd2(&bench, Workload::W3, &template, &template)?
            }
            Workload::W3dv => {
                let w3 = scd2_template(&bench)?;
                let template = dv_template(&bench, &w3, "w3dv", SCD2_PIPELINE, "lake/silver/customers")?;
                scd2(&bench, Workload::W3dv, &template, &w3)?
            }
        };
        outcomes.push(outcome);
    }
    print_summary(&outcomes, bench.runs);
    Ok(())
}
