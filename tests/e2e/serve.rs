//! `inlet serve`: files dropped while it runs land once, even one written slowly or renamed
//! in; the tables over them refresh; `/metrics`, `/health`, `/ready` answer; SIGTERM stops it
//! with exit 0, and a kill -9 mid-burst followed by a restart loses and doubles nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inlet_tests::{Scratch, inlet_bin, single_i64};

const PIPELINE: &str = r#"
[pipeline]
name = "serve"

[pipeline.serve]
listen = "127.0.0.1:0"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
pattern = "*.csv"
schema = { order_id = "bigint", amount = "decimal(10,2)" }
debounce_ms = 500
reconcile_interval_secs = 60

[tables."gold.totals"]
sql = "SELECT COUNT(*) AS orders, SUM(amount) AS amount FROM bronze.orders"
"#;

/// A running `inlet serve` and its address.
pub(crate) struct Serve {
    child: Child,
    address: String,
}

impl Drop for Serve {
    /// A failed test leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    pub(crate) fn start(scratch: &Scratch) -> Serve {
        Serve::start_with(scratch, &[])
    }

    /// With extra environment variables.
    pub(crate) fn start_with(scratch: &Scratch, env: &[(&str, &str)]) -> Serve {
        Serve::spawn(scratch, env, "warn", Stdio::inherit())
    }

    /// Logging at `level` into `serve.log` in the scratch directory.
    pub(crate) fn start_logged(scratch: &Scratch, env: &[(&str, &str)], level: &str) -> Serve {
        let log = std::fs::File::create(scratch.path("serve.log")).unwrap();
        Serve::spawn(scratch, env, level, Stdio::from(log))
    }

    fn spawn(scratch: &Scratch, env: &[(&str, &str)], level: &str, stderr: Stdio) -> Serve {
        let mut child = Command::new(inlet_bin())
            .args(["serve", "inlet.toml"])
            .current_dir(scratch.dir.path())
            .env("INLET_LOG", level)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address = line.trim().rsplit("http://").next().unwrap().to_owned();
        assert!(address.contains(':'), "no address in {line:?}");
        Serve { child, address }
    }

    /// `http://<address>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `GET path`: status code and body.
    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    /// A metric's value (the sum over its label sets).
    pub(crate) fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    pub(crate) fn wait_for(&self, name: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.metric(name) < value {
            assert!(Instant::now() < deadline, "{name} never reached {value}:\n{}", self.get("/metrics").1);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn signal(&mut self, signal: &str) -> Option<i32> {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "serve did not stop on {signal}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn orders(first: u64, n: u64) -> String {
    let mut csv = String::from("order_id,amount\n");
    for id in first..first + n {
        csv.push_str(&format!("{id},1.00\n"));
    }
    csv
}

#[test]
fn serve_lands_arriving_files_once_and_stops_cleanly() {
    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    std::fs::create_dir_all(scratch.path("landing")).unwrap();
    let mut serve = Serve::start(&scratch);
    assert_eq!(serve.get("/health").0, 200);

    // A burst of files, one written slowly in pieces (each gap well under debounce_ms),
    // one written elsewhere and renamed in.
    for i in 0..5 {
        scratch.write(&format!("landing/burst-{i}.csv"), orders(i * 10, 10));
    }
    let slow_path = scratch.path("landing/slow.csv");
    let mut slow = std::fs::File::create(&slow_path).unwrap();
    let text = orders(100, 20);
    for piece in text.as_bytes().chunks(40) {
        slow.write_all(piece).unwrap();
        slow.flush().unwrap();
        std::thread::sleep(Duration::from_millis(60));
    }
    drop(slow);
    scratch.write("staging/renamed.csv", orders(200, 5));
    std::fs::rename(scratch.path("staging/renamed.csv"), scratch.path("landing/renamed.csv")).unwrap();

    serve.wait_for("inlet_rows_ingested_total", 75.0);
    serve.wait_for("inlet_commits_total", 2.0);
    assert_eq!(serve.metric("inlet_files_ingested_total"), 7.0);
    let (status, ready) = serve.get("/ready");
    assert_eq!(status, 200, "{ready}");
    // The gold table follows bronze.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let gold = scratch.duckdb("gold.totals", "SELECT orders FROM {t}");
        if gold.first().and_then(|r| r[0].as_i64()) == Some(75) {
            break;
        }
        assert!(Instant::now() < deadline, "gold never caught up: {gold:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(single_i64(&scratch.duckdb("bronze.orders", "SELECT COUNT(DISTINCT order_id) FROM {t}")), 75);
    assert_eq!(serve.signal("-TERM"), Some(0), "SIGTERM exits 0");

    // Killed mid-burst, then restarted: every row exactly once.
    let mut serve = Serve::start(&scratch);
    for i in 0..20 {
        scratch.write(&format!("landing/more-{i}.csv"), orders(1000 + i * 10, 10));
        if i == 10 {
            std::thread::sleep(Duration::from_millis(400));
        }
    }
    std::thread::sleep(Duration::from_millis(450));
    serve.signal("-KILL");
    let serve = Serve::start(&scratch);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let count = single_i64(&scratch.duckdb("bronze.orders", "SELECT COUNT(*) FROM {t}"));
        if count >= 275 {
            assert_eq!(count, 275, "nothing doubled");
            break;
        }
        assert!(Instant::now() < deadline, "only {count} rows after the restart");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(single_i64(&scratch.duckdb("bronze.orders", "SELECT COUNT(DISTINCT order_id) FROM {t}")), 275);
    let mut serve = serve;
    assert_eq!(serve.signal("-INT"), Some(0), "SIGINT exits 0");
}

#[test]
fn a_failing_source_is_retried_with_backoff_then_its_circuit_opens() {
    // The landing directory is missing at first: listing fails, which is retryable.
    let scratch = Scratch::new();
    let retrying = PIPELINE.replace(
        "[pipeline.serve]",
        "[pipeline.retry]\nmax_attempts = 50\ninitial_backoff_ms = 100\nmax_backoff_secs = 1\n\n[pipeline.serve]",
    );
    scratch.pipeline(&retrying);
    let mut serve = Serve::start(&scratch);
    serve.wait_for("inlet_retries_total", 2.0);
    assert_eq!(serve.get("/ready").0, 503, "the failing source is reported");
    scratch.write("landing/late.csv", orders(1, 3));
    serve.wait_for("inlet_rows_ingested_total", 3.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while serve.get("/ready").0 != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(serve.signal("-TERM"), Some(0));

    // Failing on and on: after max_attempts the source is left alone for a cool-down.
    let scratch = Scratch::new();
    scratch.pipeline(&PIPELINE.replace(
        "[pipeline.serve]",
        "[pipeline.retry]\nmax_attempts = 2\ninitial_backoff_ms = 50\nmax_backoff_secs = 60\n\n[pipeline.serve]",
    ));
    let mut serve = Serve::start(&scratch);
    serve.wait_for("inlet_circuit_open", 1.0);
    let (_, health) = serve.get("/health");
    assert!(health.contains("open circuits: orders"), "{health}");
    let runs = serve.metric("inlet_runs_total");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(serve.metric("inlet_runs_total"), runs, "no hammering while the circuit is open");
    assert_eq!(serve.signal("-TERM"), Some(0));
}

#[test]
fn schedules_and_triggers_decide_what_serve_runs() {
    // `orders` runs on a cron (every 2 s; six fields count seconds), not on file events;
    // `returns` is manual; gold refreshes on its own cron, silver after upstream commits,
    // and the manual table never under serve.
    let scratch = Scratch::new();
    scratch.pipeline(
        r#"
[pipeline]
name = "scheduled"

[pipeline.serve]
listen = "127.0.0.1:0"
max_concurrent_tasks = 2

[sources.orders]
type = "files"
path = "landing/orders"
format = "csv"
target = "bronze.orders"
schema = { order_id = "bigint", amount = "decimal(10,2)" }
trigger = "schedule"
schedule = "*/2 * * * * *"
debounce_ms = 100

[sources.returns]
type = "files"
path = "landing/returns"
format = "csv"
target = "bronze.returns"
trigger = "manual"

[tables."silver.orders"]
sql = "SELECT order_id, amount FROM bronze.orders"

[tables."gold.totals"]
sql = "SELECT COUNT(*) AS orders FROM silver.orders"
refresh = "schedule"
schedule = "*/3 * * * * *"

[tables."gold.returns"]
sql = "SELECT COUNT(*) AS n FROM bronze.returns"
refresh = "manual"
"#,
    );
    scratch.write("landing/orders/a.csv", orders(1, 10));
    scratch.write("landing/returns/r.csv", "order_id\n1\n");
    let mut serve = Serve::start(&scratch);
    serve.wait_for("inlet_rows_ingested_total", 10.0);
    let landed = Instant::now();
    // gold follows on its own schedule, silver right after bronze.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let gold = std::path::Path::new(&scratch.table("gold.totals")).join("_delta_log").exists();
        if gold && single_i64(&scratch.duckdb("gold.totals", "SELECT orders FROM {t}")) == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "gold never refreshed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(single_i64(&scratch.duckdb("silver.orders", "SELECT COUNT(*) FROM {t}")), 10);

    // A new file is taken at the next cron time, not by an event.
    scratch.write("landing/orders/b.csv", orders(100, 5));
    serve.wait_for("inlet_rows_ingested_total", 15.0);
    assert!(landed.elapsed() < Duration::from_secs(20));
    // Manual source and table: never run by serve.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!std::path::Path::new(&scratch.table("bronze.returns")).join("_delta_log").exists());
    assert!(!std::path::Path::new(&scratch.table("gold.returns")).join("_delta_log").exists());
    let (_, metrics) = serve.get("/metrics");
    assert!(metrics.contains("inlet_table_freshness_seconds{table=\"bronze.orders\"}"), "{metrics}");
    assert!(metrics.contains("inlet_commit_conflicts_total{table=\"gold.totals\"} 0"), "{metrics}");
    assert_eq!(serve.signal("-TERM"), Some(0));

    // Manual ones run with `inlet run`.
    let run = scratch.inlet(&["run", "--select", "bronze.returns+"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(single_i64(&scratch.duckdb("gold.returns", "SELECT n FROM {t}")), 1);
}

#[test]
fn serve_compacts_tables_a_run_leaves_with_small_files_and_vacuums_on_its_schedule() {
    let scratch = Scratch::new();
    scratch.pipeline(&PIPELINE.replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\n\n[pipeline.maintenance]\nmax_small_files = 3\nvacuum_schedule = \"*/2 * * * * *\"\ndeleted_file_retention_hours = 0\n",
    ));
    std::fs::create_dir_all(scratch.path("landing")).unwrap();
    let serve = Serve::start(&scratch);
    // One file per run: the fourth small file in bronze makes the run compact it.
    for i in 0..4 {
        scratch.write(&format!("landing/{i}.csv"), orders(i * 10, 10));
        serve.wait_for("inlet_files_ingested_total", (i + 1) as f64);
    }
    // (The scheduled vacuum counts too: the compaction is looked for in the table's history.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let history = scratch.inlet(&["history", "bronze.orders", "--output", "json"]);
        assert_eq!(history.code, Some(0), "{}", history.stderr);
        let history: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
        if history.as_array().unwrap().iter().any(|v| {
            v["operation"] == "OPTIMIZE"
                && v["user_metadata"].as_str().is_some_and(|m| m.starts_with("inlet serve (auto-compaction)"))
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no auto-compaction: {history}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The scheduled vacuum (the table keeps removed files 0 hours) deletes the small files.
    let bronze = scratch.path("lake/bronze/orders");
    let data_files = || {
        std::fs::read_dir(&bronze)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".parquet")))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while data_files() > 1 {
        assert!(Instant::now() < deadline, "{} data files left: the scheduled vacuum never ran", data_files());
        std::thread::sleep(Duration::from_millis(300));
    }
    let metrics = serve.get("/metrics").1;
    assert!(
        metrics.lines().any(|l| l.starts_with("inlet_maintenance_actions_total{")
            && l.contains("action=\"vacuum\"")
            && l.contains("outcome=\"ok\"")),
        "{metrics}"
    );
    assert!(!metrics.contains("outcome=\"failed\""), "{metrics}");
    assert_eq!(single_i64(&scratch.duckdb("bronze.orders", "SELECT COUNT(DISTINCT order_id) FROM {t}")), 40);
}
