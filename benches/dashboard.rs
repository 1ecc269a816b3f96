//! `inlet-dashboard-bench`: how fast the dashboard answers over a big lake, and what lineage
//! events cost a run.
//!
//! 1. Pages. Makes once (under `--dir`) a lake whose table `bronze.events` has `--versions`
//!    versions (one small file each, checkpoints as inlet writes them) and whose run history
//!    holds `--runs` rows; starts `inlet ui` on it, then requests each page and its `/api/`
//!    twin `--requests` times, one after the other, each on a new connection, and prints
//!    p50, p99 and max per page. Target: p99 under 200 ms.
//! 2. Lineage. `inlet run` over `--files` CSV files of `--rows-per-file` orders, as whole
//!    processes under `/usr/bin/time`, alternately without and with `[pipeline.openlineage]`
//!    (events appended to a file), `--ingest-runs` times each; the medians and their ratio.
//!    Target: under 1% more wall time and CPU.
//!
//! Needs the `inlet` binary beside this one (`cargo build --release --workspace --bins`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use clap::Parser;
use inlet_benches::peer::{Measured, alternate, measured};
use inlet_benches::{Format, generate, percentile, pipeline_toml};
use inlet_engine::table::{Commit, Table};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    versions: u64,
    #[arg(long, default_value_t = 100_000)]
    runs: u64,
    #[arg(long, default_value_t = 100)]
    requests: usize,
    #[arg(long, default_value_t = 20)]
    files: u64,
    #[arg(long, default_value_t = 100_000)]
    rows_per_file: u64,
    #[arg(long, default_value_t = 3)]
    ingest_runs: usize,
    /// Only the pages, or only lineage.
    #[arg(long)]
    pages_only: bool,
    #[arg(long)]
    lineage_only: bool,
    #[arg(long, default_value = "/tmp/inlet-bench/dashboard")]
    dir: PathBuf,
}

const PIPELINE: &str = r#"[pipeline]
name = "big"
lake = "lake"

[sources.events]
type = "files"
path = "landing"
format = "csv"
target = "bronze.events"
freshness_sla_secs = 3600

[tables."silver.events"]
sql = "SELECT id, note FROM bronze.events"
"#;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let inlet = std::env::current_exe()?.with_file_name("inlet");
    if !inlet.exists() {
        bail!("no inlet binary at {}: cargo build --release --workspace --bins", inlet.display());
    }
    if !args.lineage_only {
        pages(&args, &inlet)?;
    }
    if !args.pages_only {
        lineage(&args, &inlet)?;
    }
    Ok(())
}

fn pages(args: &Args, inlet: &Path) -> anyhow::Result<()> {
    let dir = args.dir.join(format!("lake-{}v-{}r", args.versions, args.runs));
    if !dir.join("ready").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("landing"))?;
        std::fs::write(dir.join("inlet.toml"), PIPELINE)?;
        let began = Instant::now();
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(make_lake(&dir, args.versions, args.runs))?;
        std::fs::write(dir.join("ready"), "")?;
        println!("made the lake in {:.0} s", began.elapsed().as_secs_f64());
    }
    let mut child = Command::new(inlet)
        .args(["ui", "inlet.toml", "--listen", "127.0.0.1:0"])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting inlet ui")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().context("no stdout")?), &mut line)?;
    let address = line.trim().rsplit("http://").next().unwrap_or_default().trim_end_matches('/').to_owned();
    let middle = args.versions / 2;
    let pages = [
        "/".to_owned(),
        "/api/pipeline".to_owned(),
        "/tables/bronze.events".to_owned(),
        "/api/tables/bronze.events".to_owned(),
        format!("/tables/bronze.events?before={middle}"),
        "/runs".to_owned(),
        "/api/runs".to_owned(),
        "/runs?status=failed&table=silver.events".to_owned(),
        format!("/api/runs?offset={}", args.runs / 2),
        "/quarantine".to_owned(),
    ];
    println!(
        "{} versions of bronze.events, {} run-history rows; {} requests per page, one at a time",
        args.versions, args.runs, args.requests
    );
    let outcome = (|| -> anyhow::Result<()> {
        for page in &pages {
            // One untimed request: the first reads what later ones find in the page cache.
            get(&address, page)?;
            let mut times = Vec::with_capacity(args.requests);
            let mut bytes = 0;
            for _ in 0..args.requests {
                let began = Instant::now();
                bytes = get(&address, page)?;
                times.push(began.elapsed().as_secs_f64() * 1000.0);
            }
            let (p50, p99, max) =
                (percentile(&mut times, 0.5), percentile(&mut times, 0.99), percentile(&mut times, 1.0));
            let verdict = if p99 < 200.0 { "ok" } else { "OVER 200 ms" };
            println!("{page:<48} p50 {p50:>7.1} ms  p99 {p99:>7.1} ms  max {max:>7.1} ms  {bytes:>8} bytes  {verdict}");
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// `GET path` on a new connection; the body's size. Anything but 200 is an error.
fn get(address: &str, path: &str) -> anyhow::Result<usize> {
    let mut stream = std::net::TcpStream::connect(address)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    if !text.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", text.chars().take(300).collect::<String>());
    }
    Ok(text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len()))
}

/// `versions` commits of one small file to `bronze.events`, and `runs` run-history rows.
async fn make_lake(dir: &Path, versions: u64, runs: u64) -> anyhow::Result<()> {
    let lake = url::Url::from_directory_path(std::path::absolute(dir.join("lake"))?)
        .map_err(|()| anyhow::anyhow!("no URL for {}", dir.display()))?;
    let name = inlet_engine::config::TableName::parse("bronze.events").context("table name")?;
    let mut table = Table::open("bronze.events", inlet_engine::table::table_url(&lake, &name)?).await?;
    let schema =
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true), Field::new("note", DataType::Utf8, true)]));
    for version in 0..versions {
        let ids: Vec<i64> = (0..10).map(|i| (version * 10 + i) as i64).collect();
        let notes: Vec<String> = ids.iter().map(|i| format!("event {i}")).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(notes))],
        )?;
        let mut writer = table.writer_factory(&[]).writer(schema.clone());
        writer.write(&batch).await?;
        let adds = writer.close().await?;
        let metadata =
            HashMap::from([("userMetadata".to_owned(), serde_json::Value::String(format!("bench commit {version}")))]);
        let first = (version == 0).then(|| schema.clone());
        table.commit(Commit::append(adds, first, "inlet.bench", version as i64, metadata)).await?;
        if version % 1000 == 999 {
            println!("  {} versions", version + 1);
        }
    }
    let runs_url = lake.join(inlet_engine::audit::RUNS_PATH)?;
    let mut history = Table::open(inlet_engine::audit::RUNS_TABLE, runs_url).await?;
    let runs_schema = inlet_engine::audit::runs_schema();
    let per_commit = 5_000;
    let start = chrono::Utc::now().timestamp_micros() - runs as i64 * 60_000_000;
    let mut row = 0u64;
    let mut commit = 0;
    while row < runs {
        let n = per_commit.min(runs - row);
        let rows: Vec<u64> = (row..row + n).collect();
        let text = |f: &dyn Fn(u64) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from_iter(rows.iter().map(|r| f(*r))))
        };
        let times = |offset: i64| -> ArrayRef {
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(|r| start + *r as i64 * 60_000_000 + offset),
                )
                .with_timezone("UTC"),
            )
        };
        let numbers = |f: &dyn Fn(u64) -> Option<i64>| -> ArrayRef {
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| f(*r))))
        };
        let failed = |r: u64| r % 50 == 7;
        let columns: Vec<ArrayRef> = vec![
            text(&|r| Some(format!("run-{}", r / 2))),
            text(&|_| Some("big".to_owned())),
            text(&|r| Some(if r % 2 == 0 { "source" } else { "table" }.to_owned())),
            text(&|r| Some(if r % 2 == 0 { "events" } else { "silver.events" }.to_owned())),
            text(&|r| Some(if r % 2 == 0 { "bronze.events" } else { "silver.events" }.to_owned())),
            text(&|r| Some(if failed(r) { "failed" } else { "committed" }.to_owned())),
            times(0),
            times(1_500_000),
            numbers(&|r| (!failed(r)).then_some((r / 2) as i64)),
            numbers(&|_| Some(1000)),
            numbers(&|_| Some(990)),
            numbers(&|_| Some(10)),
            text(&|r| failed(r).then(|| format!("table `silver.events`: storage: connection reset ({r})"))),
            text(&|_| None),
            text(&|r| {
                (!failed(r)).then(|| {
                    format!(r#"[{{"version":{},"timestamp_ms":null,"operation":"WRITE","run_id":"run-{}","rows":{{"rows":990,"quarantined":10}},"upstream":{{}},"files":["orders-{r}.csv"],"quality":null,"user_metadata":null,"files_added":1,"files_removed":0,"from":"log"}}]"#, r / 2, r / 2)
                })
            }),
            text(&|_| None),
        ];
        let batch = RecordBatch::try_new(runs_schema.clone(), columns)?;
        let mut writer = history.writer_factory(&[]).writer(runs_schema.clone());
        writer.write(&batch).await?;
        let adds = writer.close().await?;
        let first = (commit == 0).then(|| runs_schema.clone());
        history.commit(Commit::append(adds, first, "inlet.runs", commit, HashMap::new())).await?;
        commit += 1;
        row += n;
    }
    Ok(())
}

fn lineage(args: &Args, inlet: &Path) -> anyhow::Result<()> {
    let data = args.dir.join(format!("orders-{}x{}", args.files, args.rows_per_file));
    if !data.join("ready").exists() {
        let _ = std::fs::remove_dir_all(&data);
        generate(&data, Format::Csv, args.files, args.rows_per_file, 7)?;
        std::fs::write(data.join("ready"), "")?;
    }
    let rows = args.files * args.rows_per_file;
    let runs = args.dir.join("runs");
    println!(
        "inlet run over {} CSV files of {} orders: without lineage (inlet) and with (lineage)",
        args.files, args.rows_per_file
    );
    alternate("lineage", args.ingest_runs, &runs, false, rows, "rows", "", |who, dir| -> anyhow::Result<Measured> {
        std::fs::create_dir_all(dir.join("landing"))?;
        for entry in std::fs::read_dir(&data)? {
            let entry = entry?;
            if entry.file_name() != "ready" {
                std::fs::hard_link(entry.path(), dir.join("landing").join(entry.file_name()))?;
            }
        }
        let mut pipeline = pipeline_toml(Format::Csv, 64);
        pipeline.push_str(
            "\n[tables.\"silver.orders\"]\nsql = \"SELECT order_id, customer_id, amount FROM bronze.orders\"\n",
        );
        if who == "lineage" {
            pipeline = pipeline
                .replace("lake = \"lake\"\n", "lake = \"lake\"\n\n[pipeline.openlineage]\nfile = \"lineage.ndjson\"\n");
        }
        std::fs::write(dir.join("inlet.toml"), pipeline)?;
        let mut command = Command::new(inlet);
        command.args(["run", "inlet.toml"]);
        let (_, measured) = measured(command, dir)?;
        if who == "lineage" {
            let events = std::fs::read_to_string(dir.join("lineage.ndjson"))?.lines().count();
            if events == 0 {
                bail!("no lineage events were written");
            }
        }
        Ok(measured)
    })
}
