//! `inlet-rest-bench`: inlet's REST source against dlt's `rest_api` source, on one local
//! server, side by side.
//!
//! The bench serves `--records` JSON records, `--per-page` to a page (`GET /items?page=N`,
//! `{"data": [...], "next": "<url of page N+1>" | null}`), every page rendered before the
//! first run so serving costs almost nothing. Then, `--runs` times, alternating which goes
//! first, it runs `inlet run` and `benches/rest/dlt_rest.py` (dlt's `rest_api` source into
//! its filesystem destination in Delta format) as whole processes under `/usr/bin/time`, each
//! into a fresh directory, and prints wall time, CPU seconds (user + sys, forked workers
//! included), peak RSS (the largest process) and records/s, then the medians and inlet's
//! throughput over dlt's.
//!
//! Needs the `inlet` binary beside this one (`cargo build --release --workspace --bins`) and
//! a virtualenv with dlt: `python3 -m venv .venv-bench && .venv-bench/bin/pip install
//! "dlt[deltalake]==1.31.0"`. dlt's own settings pass through the environment (e.g.
//! `NORMALIZE__WORKERS=2`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use inlet_benches::peer::{Measured, alternate, measured};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[arg(long, default_value_t = 1000)]
    per_page: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The virtualenv holding dlt.
    #[arg(long, default_value = ".venv-bench")]
    venv: PathBuf,
    /// Run inlet only.
    #[arg(long)]
    no_dlt: bool,
    /// dlt's `max_table_nesting`: 0 keeps nested values as JSON text, as inlet does
    /// (the default); -1 leaves dlt's own (flattened objects, lists as child tables).
    #[arg(long, default_value_t = 0)]
    dlt_nesting: i64,
    #[arg(long, default_value = "/tmp/inlet-bench/rest")]
    dir: PathBuf,
}

/// A record, as the generator writes it (the same shape dlt_rest.py was tried with).
fn record(out: &mut String, i: u64) {
    use std::fmt::Write;
    const STATUSES: [&str; 3] = ["new", "paid", "shipped"];
    const CITIES: [&str; 7] = ["Berlin", "Lisbon", "Oslo", "Porto", "Turin", "Lyon", "Ghent"];
    let amount = (i * 7919 % 1_000_000) as f64 / 100.0;
    let at = |secs: u64| {
        let t = chrono::DateTime::from_timestamp(1_704_067_200 + secs as i64, 0).unwrap_or_default();
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    };
    let _ = write!(
        out,
        r#"{{"id":{i},"name":"customer-{i}","email":"c{i}@example.com","amount":{},"status":"{}","created_at":"{}","updated_at":"{}","address":{{"city":"{}","zip":"{:05}"}},"tags":["a","b"]}}"#,
        serde_json::Number::from_f64(amount).map_or("0".to_owned(), |n| n.to_string()),
        STATUSES[(i % 3) as usize],
        at(i),
        at(i + 3600),
        CITIES[(i % 7) as usize],
        i % 100_000
    );
}

/// Every page's body, rendered once.
fn render(records: u64, per_page: u64, base: &str) -> Vec<bytes::Bytes> {
    let pages = records.div_ceil(per_page);
    (1..=pages)
        .map(|page| {
            let first = (page - 1) * per_page + 1;
            let last = (first + per_page - 1).min(records);
            let mut body = String::with_capacity((per_page * 230) as usize);
            body.push_str(r#"{"data":["#);
            for i in first..=last {
                if i > first {
                    body.push(',');
                }
                record(&mut body, i);
            }
            match page < pages {
                true => body.push_str(&format!(r#"],"next":"{base}/items?page={}"}}"#, page + 1)),
                false => body.push_str(r#"],"next":null}"#),
            }
            bytes::Bytes::from(body)
        })
        .collect()
}

/// Serves the pages on a loopback port of its own runtime; the base URL.
fn serve(records: u64, per_page: u64) -> anyhow::Result<(String, tokio::runtime::Runtime)> {
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let base = format!("http://{}", listener.local_addr()?);
    let began = Instant::now();
    let pages = Arc::new(render(records, per_page, &base));
    let bytes: usize = pages.iter().map(bytes::Bytes::len).sum();
    eprintln!(
        "rendered {} pages, {:.0} MB, in {:.1} s",
        pages.len(),
        bytes as f64 / 1e6,
        began.elapsed().as_secs_f64()
    );
    async fn items(State(pages): State<Arc<Vec<bytes::Bytes>>>, uri: axum::http::Uri) -> axum::response::Response {
        let page = uri
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("page=")))
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1);
        match pages.get(page.saturating_sub(1)) {
            Some(body) => ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response(),
            None => (StatusCode::NOT_FOUND, "no such page").into_response(),
        }
    }
    let app = axum::Router::new().route("/items", axum::routing::get(items)).with_state(pages);
    runtime.spawn(async move { axum::serve(listener, app).await });
    Ok((base, runtime))
}

fn run_inlet(inlet: &Path, base: &str, dir: &Path, records: u64) -> anyhow::Result<Measured> {
    std::fs::write(
        dir.join("inlet.toml"),
        format!(
            r#"[pipeline]
name = "rest-bench"

[sources.items]
type = "rest"
target = "bronze.items"
base_url = "{base}/"
path = "items"
params = {{ page = 1 }}
paginator = {{ type = "json_link", next_url_path = "next" }}
data_selector = "data"
primary_key = ["id"]
schema = {{ id = "bigint", amount = "double", created_at = "timestamptz", updated_at = "timestamptz" }}
"#
        ),
    )?;
    let mut command = Command::new(inlet);
    command.args(["run", "--output", "json"]).env("INLET_LOG", "warn");
    let (stdout, measured) = measured(command, dir)?;
    let report: serde_json::Value = serde_json::from_str(&stdout)?;
    let rows = report["sources"][0]["rows"].as_u64().unwrap_or_default();
    if rows != records {
        bail!("inlet landed {rows} rows, not {records}: {report}");
    }
    // Read back from the table (untimed), as dlt_rest.py reads back dlt's: every id once.
    let check = Command::new(inlet)
        .args(["query", "SELECT count(*) AS n, count(DISTINCT id) AS d FROM bronze.items", "--output", "json"])
        .current_dir(dir)
        .output()?;
    let counted: serde_json::Value = serde_json::from_slice(&check.stdout)
        .with_context(|| format!("inlet query: {}", String::from_utf8_lossy(&check.stderr)))?;
    if counted[0]["n"] != records || counted[0]["d"] != records {
        bail!("bronze.items holds {counted}, not {records} records once");
    }
    Ok(measured)
}

fn run_dlt(args: &Args, base: &str, dir: &Path) -> anyhow::Result<Measured> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("rest/dlt_rest.py");
    let venv = std::path::absolute(&args.venv)?;
    let mut command = Command::new(venv.join("bin/python"));
    command
        .arg(script)
        .arg("--base-url")
        .arg(base)
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--work")
        .arg(dir.join("work"))
        .env("RUNTIME__DLTHUB_TELEMETRY", "false");
    if args.dlt_nesting >= 0 {
        command.arg("--max-table-nesting").arg(args.dlt_nesting.to_string());
    }
    let (stdout, measured) = measured(command, dir)?;
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(line).with_context(|| format!("dlt said: {stdout}"))?;
    let rows = report["rows"].as_u64().unwrap_or_default();
    if rows != args.records {
        bail!("dlt landed {rows} rows, not {}: {report}", args.records);
    }
    Ok(measured)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let inlet = std::env::current_exe()?.with_file_name("inlet");
    if !inlet.exists() {
        bail!("{} is missing: cargo build --release --workspace --bins", inlet.display());
    }
    if !args.no_dlt && !args.venv.join("bin/python").exists() {
        bail!(
            "no dlt at {}: python3 -m venv .venv-bench && .venv-bench/bin/pip install \"dlt[deltalake]==1.31.0\"",
            args.venv.display()
        );
    }
    // dlt's settings in effect (its configuration comes from the environment), for the record.
    let settings: Vec<String> =
        std::env::vars().filter(|(k, _)| k.contains("__")).map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "dlt settings from the environment: {}",
        if settings.is_empty() { "none".to_owned() } else { settings.join(" ") }
    );
    let (base, _server) = serve(args.records, args.per_page)?;
    alternate(
        "dlt",
        args.runs,
        &args.dir,
        args.no_dlt,
        args.records,
        "records",
        &format!("({} records, {} a page)", args.records, args.per_page),
        |peer, dir| match peer {
            "inlet" => run_inlet(&inlet, &base, dir, args.records),
            _ => run_dlt(&args, &base, dir),
        },
    )
}
