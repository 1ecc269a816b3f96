//! `inlet-serve-bench`: latency of `inlet serve`, from a file's arrival in the landing
//! directory (a rename into it, after the file was written and closed) to its rows being
//! visible in the bronze table's log, and to the gold table over bronze having read them.
//! 200 small files arrive at 10 files/s; prints p50 and p99 of both.
//!
//! Uses the `inlet` binary beside this one: `cargo build --release --bins` first, then
//! `target/release/inlet-serve-bench`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 200)]
    files: usize,
    #[arg(long, default_value_t = 10.0)]
    files_per_sec: f64,
    #[arg(long, default_value = "/tmp/inlet-bench/serve")]
    dir: PathBuf,
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

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let inlet = std::env::current_exe()?.with_file_name("inlet");
    if !inlet.exists() {
        bail!("{} not found: run `cargo build --release --bins` first", inlet.display());
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(args.dir.join("landing"))?;
    std::fs::create_dir_all(args.dir.join("staging"))?;
    std::fs::write(args.dir.join("inlet.toml"), PIPELINE)?;
    let mut child = Command::new(&inlet)
        .args(["serve", "inlet.toml"])
        .current_dir(&args.dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting inlet serve")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;

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
