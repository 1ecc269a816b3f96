//! `inlet-pg-bench`: a full load of a PostgreSQL table by inlet's `postgres` source against
//! dlt's `sql_database` source, side by side.
//!
//! The bench fills `--rows` rows of an `orders` table with the orders data set's columns
//! (order id, customer, timestamp, amount, currency, status, country, note) in the database
//! `--url` names, server-side, once. Then, `--runs` times, alternating which goes first, it
//! runs `inlet run` (`mode = "full"`) and `benches/pg/dlt_sql.py` (dlt's `sql_table`,
//! pyarrow backend by default, into its filesystem destination in Delta format) as whole
//! processes under `/usr/bin/time`, each into a fresh directory, checks both tables hold
//! every row, and prints wall time, CPU seconds, peak RSS and rows/s, then the medians.
//!
//! With `--cdc`, it measures change data capture instead: `inlet serve` keeps a CDC source of
//! `orders_cdc` (`--cdc-rows` rows) while the bench updates `--changes` rows in transactions of
//! `--per-transaction`, one after another; for each transaction, the time from its `COMMIT`
//! returning to the first commit of the bronze table whose position reaches its LSN (the
//! Delta log, polled every 20 ms). It prints changes/s and the p50/p99 of that latency.
//!
//! Needs the `inlet` binary beside this one (`cargo build --release --workspace --bins`), a
//! PostgreSQL server, and a virtualenv with dlt: `python3 -m venv .venv-bench &&
//! .venv-bench/bin/pip install "dlt[deltalake]==1.31.0" "sqlalchemy>=2" "psycopg[binary]"`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Parser;
use inlet_benches::peer::{Measured, alternate, measured};

#[derive(Parser)]
struct Args {
    /// The database to fill and read (`postgres://user@host:port/db`, no password).
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// dlt's `sql_table` backend: `pyarrow` or `connectorx`.
    #[arg(long, default_value = "pyarrow")]
    dlt_backend: String,
    /// The virtualenv holding dlt.
    #[arg(long, default_value = ".venv-bench")]
    venv: PathBuf,
    /// Run inlet only.
    #[arg(long)]
    no_dlt: bool,
    #[arg(long, default_value = "/tmp/inlet-bench/pg")]
    dir: PathBuf,
    /// Measure CDC under `inlet serve` instead of full loads.
    #[arg(long)]
    cdc: bool,
    /// CDC: rows in the table, changes made, and changes a transaction.
    #[arg(long, default_value_t = 100_000)]
    cdc_rows: u64,
    #[arg(long, default_value_t = 100_000)]
    changes: u64,
    #[arg(long, default_value_t = 1000)]
    per_transaction: u64,
}

/// Creates and fills `table` (the orders data set's columns) unless it holds `rows` rows.
async fn fill(url: &str, table: &str, rows: u64) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("connecting")?;
    tokio::spawn(connection);
    let held: Option<i64> = match client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await {
        Ok(row) => Some(row.get(0)),
        Err(_) => None,
    };
    if held == Some(rows as i64) {
        eprintln!("{table} holds {rows} rows already");
        return Ok(());
    }
    let began = std::time::Instant::now();
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (order_id bigint PRIMARY KEY, customer_id integer NOT NULL, ts timestamptz NOT NULL,
               amount numeric(12,2) NOT NULL, currency text NOT NULL, status text NOT NULL, country text NOT NULL, note text);
             INSERT INTO {table}
             SELECT g, 1 + (g * 7919) % 1000000, timestamptz '2024-01-01 00:00:00+00' + ((g * 104729) % 31536000) * interval '1 second',
               ((g * 15485863) % 10000000) / 100.0,
               (ARRAY['EUR','USD','GBP','CHF','JPY'])[(1 + g % 5)::int],
               (ARRAY['new','paid','shipped','delivered','cancelled','refunded'])[(1 + g % 6)::int],
               (ARRAY['DE','FR','NL','US','GB','CH','JP','ES','IT','SE','PL','BR'])[(1 + g % 12)::int],
               CASE WHEN g % 4 = 0 THEN NULL ELSE substr('gift rush fragile \"VIP\" leave at door call first a, b ok n/a thanks', 1 + (g % 30)::int, (g % 50)::int) END
             FROM generate_series(1::bigint, {rows}) g;"
        ))
        .await
        .with_context(|| format!("filling {table}"))?;
    // Outside the implicit transaction of the statements above.
    client.batch_execute(&format!("VACUUM ANALYZE {table}")).await.context("vacuuming")?;
    eprintln!("filled {table} with {rows} rows in {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}

fn run_inlet(inlet: &Path, url: &str, dir: &Path, rows: u64) -> anyhow::Result<Measured> {
    std::fs::write(
        dir.join("inlet.toml"),
        format!(
            "[pipeline]\nname = \"pg-bench\"\n\n[sources.pg]\ntype = \"postgres\"\nurl = \"{url}\"\ntables = [\"orders\"]\ntarget_prefix = \"bronze.pg_\"\nmode = \"full\"\n"
        ),
    )?;
    let mut command = Command::new(inlet);
    command.args(["run", "--output", "json"]).env("INLET_LOG", "warn");
    let (stdout, measured) = measured(command, dir)?;
    let report: serde_json::Value = serde_json::from_str(&stdout)?;
    let landed = report["sources"][0]["rows"].as_u64().unwrap_or_default();
    if landed != rows {
        bail!("inlet landed {landed} rows, not {rows}: {report}");
    }
    // Read back from the table (untimed), as dlt_sql.py reads back dlt's: every row once.
    let check = Command::new(inlet)
        .args([
            "query",
            "SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM bronze.pg_orders",
            "--output",
            "json",
        ])
        .current_dir(dir)
        .output()?;
    let counted: serde_json::Value = serde_json::from_slice(&check.stdout)
        .with_context(|| format!("inlet query: {}", String::from_utf8_lossy(&check.stderr)))?;
    if counted[0]["n"] != rows || counted[0]["d"] != rows {
        bail!("bronze.pg_orders holds {counted}, not {rows} rows once");
    }
    Ok(measured)
}

fn run_dlt(args: &Args, dir: &Path) -> anyhow::Result<Measured> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pg/dlt_sql.py");
    let venv = std::path::absolute(&args.venv)?;
    let mut command = Command::new(venv.join("bin/python"));
    command
        .arg(script)
        .arg("--url")
        .arg(args.url.replacen("postgres://", "postgresql://", 1))
        .arg("--backend")
        .arg(&args.dlt_backend)
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--work")
        .arg(dir.join("work"))
        .env("RUNTIME__DLTHUB_TELEMETRY", "false");
    let (stdout, measured) = measured(command, dir)?;
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(line).with_context(|| format!("dlt said: {stdout}"))?;
    let landed = report["rows"].as_u64().unwrap_or_default();
    if landed != args.rows {
        bail!("dlt landed {landed} rows, not {}: {report}", args.rows);
    }
    Ok(measured)
}

/// The highest LSN a commit of the table's log carries as its position.
fn logged_lsn(log: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(log) else { return 0 };
    let mut best = 0;
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        if let Some(at) = text.find("\"stream\":{\"slot\":")
            && let Some(lsn) = text[at..].find("\"lsn\":")
        {
            let digits: String = text[at + lsn + 6..].chars().take_while(char::is_ascii_digit).collect();
            best = best.max(digits.parse().unwrap_or(0));
        }
    }
    best
}

/// Moves the transactions the log reached (`logged`) from `pending` to their latencies.
fn landed(pending: &mut Vec<(u64, std::time::Instant)>, logged: u64, latencies: &mut Vec<f64>) {
    pending.retain(|(lsn, at)| {
        let seen = *lsn <= logged;
        if seen {
            latencies.push(at.elapsed().as_secs_f64());
        }
        !seen
    });
}

/// CDC under `inlet serve`: changes/s and commit-to-bronze latency.
async fn cdc(args: &Args, inlet: &Path) -> anyhow::Result<()> {
    fill(&args.url, "orders_cdc", args.cdc_rows).await?;
    let (client, connection) = tokio_postgres::connect(&args.url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'inlet_pg_bench'",
        )
        .await?;
    let dir = args.dir.join("cdc");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("inlet.toml"),
        format!(
            "[pipeline]\nname = \"pg-cdc-bench\"\n[pipeline.serve]\nlisten = \"127.0.0.1:0\"\n\n[sources.pg]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"orders_cdc\"]\ntarget_prefix = \"bronze.pg_\"\nmode = \"cdc\"\nslot = \"inlet_pg_bench\"\npoll_interval_ms = 200\n",
            args.url
        ),
    )?;
    let mut serve = Command::new(inlet)
        .arg("serve")
        .current_dir(&dir)
        .env("INLET_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let log = dir.join("lake/bronze/pg_orders_cdc/_delta_log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while logged_lsn(&log) == 0 {
        if std::time::Instant::now() > deadline {
            let _ = serve.kill();
            bail!("the snapshot did not land in ten minutes");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eprintln!("snapshot landed; changing {} rows, {} a transaction", args.changes, args.per_transaction);
    let began = std::time::Instant::now();
    let mut pending: Vec<(u64, std::time::Instant)> = Vec::new();
    let mut latencies: Vec<f64> = Vec::new();
    let transactions = args.changes.div_ceil(args.per_transaction);
    for t in 0..transactions {
        let first = 1 + (t * args.per_transaction) % args.cdc_rows;
        let last = first + args.per_transaction - 1;
        // The WAL's end inside the transaction, before its commit: the first bronze commit
        // whose position reaches it holds this transaction.
        let messages = client
            .simple_query(&format!(
                "BEGIN; UPDATE orders_cdc SET status = 'changed-{t}' WHERE order_id BETWEEN {first} AND {last}; \
                 SELECT pg_current_wal_insert_lsn()::text; COMMIT"
            ))
            .await?;
        let lsn = messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .and_then(|t| {
                let (h, l) = t.split_once('/')?;
                Some((u64::from_str_radix(h, 16).ok()? << 32) | u64::from_str_radix(l, 16).ok()?)
            })
            .context("the WAL position of a transaction")?;
        pending.push((lsn, std::time::Instant::now()));
        landed(&mut pending, logged_lsn(&log), &mut latencies);
    }
    while !pending.is_empty() {
        if std::time::Instant::now() > deadline {
            let _ = serve.kill();
            bail!("{} transactions were not in bronze in time", pending.len());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        landed(&mut pending, logged_lsn(&log), &mut latencies);
    }
    let seconds = began.elapsed().as_secs_f64();
    let _ = serve.kill();
    let _ = serve.wait();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "cdc: {} changes in {} transactions in {seconds:.1} s: {:.0} changes/s; COMMIT to bronze p50 {:.2} s, p99 {:.2} s",
        args.changes,
        transactions,
        args.changes as f64 / seconds,
        at(0.5),
        at(0.99)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let inlet = std::env::current_exe()?.with_file_name("inlet");
    if !inlet.exists() {
        bail!("{} is missing: cargo build --release --workspace --bins", inlet.display());
    }
    if args.cdc {
        return tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(cdc(&args, &inlet));
    }
    if !args.no_dlt && !args.venv.join("bin/python").exists() {
        bail!(
            "no dlt at {}: python3 -m venv .venv-bench && .venv-bench/bin/pip install \"dlt[deltalake]==1.31.0\" \"sqlalchemy>=2\" \"psycopg[binary]\"",
            args.venv.display()
        );
    }
    let settings: Vec<String> =
        std::env::vars().filter(|(k, _)| k.contains("__")).map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "dlt backend {}; dlt settings from the environment: {}",
        args.dlt_backend,
        if settings.is_empty() { "none".to_owned() } else { settings.join(" ") }
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fill(&args.url, "orders", args.rows))?;
    alternate(
        "dlt",
        args.runs,
        &args.dir,
        args.no_dlt,
        args.rows,
        "rows",
        &format!("({} rows of orders)", args.rows),
        |peer, dir| match peer {
            "inlet" => run_inlet(&inlet, &args.url, dir, args.rows),
            _ => run_dlt(&args, dir),
        },
    )
}
