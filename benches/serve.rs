//! `inlet-serve-bench`: latency of `inlet serve`, from a file's arrival in the landing
//! directory (a rename into it, after the file was written and closed) to its rows being
//! visible in the bronze table's log, and to the gold table over bronze having read them.
//! 200 small files arrive at 10 files/s; prints p50 and p99 of both.
//!
//! `--throughput`: the end-to-end bench's data set (40 CSV files, 10M rows) ingested by
//! `inlet run`, and by `inlet serve` with the files arriving all at once (hard links into
//! its empty landing directory), timed from arrival to the last row counted in
//! `/metrics`; runs alternate, and the medians are compared.
//!
//! Uses the `inlet` binary beside this one: `cargo build --release --workspace --bins` first, then
//! `inlet-serve-bench` from the release directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use inlet_benches::{percentile, start_serve};
use serde_json::Value;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 200)]
    files: usize,
    #[arg(long, default_value_t = 10.0)]
    files_per_sec: f64,
    #[arg(long, default_value = "/tmp/inlet-bench/serve")]
    dir: PathBuf,
    /// Compare the throughput of `serve` with `run` instead.
    #[arg(long)]
    throughput: bool,
    #[arg(long, default_value_t = 40)]
    data_files: u64,
    #[arg(long, default_value_t = 250_000)]
    rows_per_file: u64,
    #[arg(long, default_value_t = 3)]
    iterations: usize,
}

const PIPELINE: &str = r#"
[pipeline]
name = "serve-bench"

[pipeline.serve]
listen = "127.0.0.1:0"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
pattern = "*.csv"
schema = { order_id = "bigint", amount = "decimal(10,2)" }

[tables."gold.totals"]
sql = "SELECT COUNT(*) AS orders, SUM(amount) AS amount FROM bronze.orders"
"#;

/// Commits seen so far in a table's log: version -> its commitInfo.
fn read_log(table: &Path, seen: &mut HashMap<u64, Value>) -> bool {
    let mut new = false;
    let Ok(entries) = std::fs::read_dir(table.join("_delta_log")) else { return false };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(version) = name.strip_suffix(".json").and_then(|v| v.parse::<u64>().ok()) else { continue };
        if seen.contains_key(&version) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let info = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|a| a.get("commitInfo").cloned())
            .unwrap_or(Value::Null);
        seen.insert(version, info);
        new = true;
    }
    new
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let inlet = std::env::current_exe()?.with_file_name("inlet");
    if !inlet.exists() {
        bail!("{} not found: run `cargo build --release --workspace --bins` first", inlet.display());
    }
    if args.throughput {
        return throughput(&args, &inlet);
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(args.dir.join("landing"))?;
    std::fs::create_dir_all(args.dir.join("staging"))?;
    std::fs::write(args.dir.join("inlet.toml"), PIPELINE)?;
    let (mut child, _) = start_serve(&inlet, &args.dir, &[])?;

    let bronze = args.dir.join("lake/bronze/orders");
    let gold = args.dir.join("lake/gold/totals");
    let (mut bronze_log, mut gold_log) = (HashMap::new(), HashMap::new());
    let mut arrived: HashMap<String, Instant> = HashMap::new();
    let mut in_bronze: HashMap<String, (Instant, u64)> = HashMap::new();
    let mut in_gold: HashMap<String, Instant> = HashMap::new();
    let interval = Duration::from_secs_f64(1.0 / args.files_per_sec);
    let started = Instant::now();
    let mut next = 0;
    let deadline = |n: usize| started + interval * n as u32;
    while in_gold.len() < args.files {
        if next < args.files && Instant::now() >= deadline(next) {
            let name = format!("f-{next:04}.csv");
            let staged = args.dir.join("staging").join(&name);
            std::fs::write(&staged, format!("order_id,amount\n{next},1.00\n"))?;
            std::fs::rename(&staged, args.dir.join("landing").join(&name))?;
            arrived.insert(name, Instant::now());
            next += 1;
        }
        let now = Instant::now();
        if read_log(&bronze, &mut bronze_log) {
            for (version, info) in &bronze_log {
                for file in info.pointer("/inlet/files").and_then(|f| f.as_array()).into_iter().flatten() {
                    if let Some(path) = file.get("path").and_then(|p| p.as_str()) {
                        in_bronze.entry(path.to_owned()).or_insert((now, *version));
                    }
                }
            }
        }
        if read_log(&gold, &mut gold_log) {
            for info in gold_log.values() {
                let Some(read) = info.pointer("/inlet_transform/upstream/bronze.orders").and_then(|v| v.as_u64())
                else {
                    continue;
                };
                for (path, (_, version)) in &in_bronze {
                    if *version <= read {
                        in_gold.entry(path.clone()).or_insert(now);
                    }
                }
            }
        }
        if started.elapsed() > interval * args.files as u32 + Duration::from_secs(60) {
            let _ = child.kill();
            bail!("only {} of {} files reached gold", in_gold.len(), args.files);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let latency = |seen: &HashMap<String, Instant>| -> Vec<f64> {
        arrived.iter().filter_map(|(f, at)| seen.get(f).map(|s| s.duration_since(*at).as_secs_f64())).collect()
    };
    let bronze_at: HashMap<String, Instant> = in_bronze.iter().map(|(f, (t, _))| (f.clone(), *t)).collect();
    let (mut b, mut g) = (latency(&bronze_at), latency(&in_gold));
    println!(
        "{} files at {}/s: bronze p50 {:.2}s p99 {:.2}s; gold p50 {:.2}s p99 {:.2}s; {} bronze commits",
        args.files,
        args.files_per_sec,
        percentile(&mut b, 0.5),
        percentile(&mut b, 0.99),
        percentile(&mut g, 0.5),
        percentile(&mut g, 0.99),
        bronze_log.len()
    );
    Ok(())
}

/// The sum of a metric's samples on a running `serve`.
fn metric(address: &str, name: &str) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum())
}

fn throughput(args: &Args, inlet: &Path) -> anyhow::Result<()> {
    let format = inlet_benches::Format::Csv;
    let rows = args.data_files * args.rows_per_file;
    let data =
        PathBuf::from("/tmp/inlet-bench").join(format!("landing-csv-{}x{}", args.data_files, args.rows_per_file));
    if !data.join(".done").exists() {
        inlet_benches::generate(&data, format, args.data_files, args.rows_per_file, 42)?;
        std::fs::write(data.join(".done"), b"")?;
    }
    let files: Vec<PathBuf> = std::fs::read_dir(&data)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    let toml = format!("{}\n[pipeline.serve]\nlisten = \"127.0.0.1:0\"\n", inlet_benches::pipeline_toml(format, 1000));
    let (mut run_secs, mut serve_secs) = (Vec::new(), Vec::new());
    for iteration in 0..args.iterations {
        // `inlet run` over the files already there.
        let scratch = args.dir.join("run");
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)?;
        std::os::unix::fs::symlink(&data, scratch.join("landing"))?;
        std::fs::write(scratch.join("inlet.toml"), &toml)?;
        // Each side starts with the other side's output flushed to disk.
        Command::new("sync").status()?;
        let started = Instant::now();
        let status =
            Command::new(inlet).args(["run", "inlet.toml"]).current_dir(&scratch).stdout(Stdio::null()).status()?;
        let run = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!("inlet run failed: {status}");
        }
        // `inlet serve` with the same files arriving at once.
        let scratch = args.dir.join("serve");
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(scratch.join("landing"))?;
        std::fs::write(scratch.join("inlet.toml"), &toml)?;
        let (mut child, address) = start_serve(inlet, &scratch, &[])?;
        // Let its first listing of the empty directory pass.
        Command::new("sync").status()?;
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        for file in &files {
            let name = file.file_name().context("file name")?;
            std::fs::hard_link(file, scratch.join("landing").join(name))?;
        }
        while metric(&address, "inlet_rows_ingested_total")? < rows as f64 {
            if started.elapsed() > Duration::from_secs(600) {
                let _ = child.kill();
                bail!("serve did not ingest {rows} rows in 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let serve = started.elapsed().as_secs_f64();
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
        println!("iteration {iteration}: run {run:.2}s, serve {serve:.2}s");
        run_secs.push(run);
        serve_secs.push(serve);
    }
    let (run, serve) = (inlet_benches::median(&mut run_secs), inlet_benches::median(&mut serve_secs));
    println!(
        "{rows} rows, median of {}: run {run:.2}s ({:.2} M rows/s), serve {serve:.2}s ({:.2} M rows/s), serve/run {:.2}",
        args.iterations,
        rows as f64 / run / 1e6,
        rows as f64 / serve / 1e6,
        serve / run
    );
    Ok(())
}
