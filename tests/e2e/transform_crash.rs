//! Derived tables under `kill -9`: runs killed at random moments (during merges and SCD2
//! rewrites among others) never leave a half-applied version, and the next run ends with
//! exactly the tables an uninterrupted pipeline builds.

use std::process::Command;
use std::time::Duration;

use inlet_tests::{Scratch, duckdb_batch, inlet_bin};
use rand::{Rng, SeedableRng};

const PIPELINE: &str = r#"
[pipeline]
name = "crash"

[sources.orders]
type = "files"
path = "landing/orders"
format = "csv"
target = "bronze.orders"
schema = { order_id = "bigint", customer_id = "bigint", updated_at = "timestamp", amount = "decimal(12,2)" }
max_files_per_commit = 2

[sources.customers]
type = "files"
path = "landing/customers"
format = "csv"
target = "bronze.customers"
schema = { customer_id = "bigint", updated_at = "timestamp" }
max_files_per_commit = 2

[tables."silver.orders"]
sql = "SELECT order_id, customer_id, status, amount, updated_at FROM bronze.orders"
write = "merge"
keys = ["order_id"]
sequence_by = "updated_at"
delete_when = "status = 'deleted'"
incremental = true

[tables."silver.customers"]
sql = "SELECT customer_id, tier, city, updated_at FROM bronze.customers"
write = "scd2"
keys = ["customer_id"]
sequence_by = "updated_at"
incremental = true

[tables."gold.revenue_by_tier"]
sql = """
SELECT c.tier, SUM(o.amount) AS revenue, COUNT(*) AS orders
FROM silver.orders o JOIN silver.customers c ON o.customer_id = c.customer_id AND c._is_current
GROUP BY c.tier
"""
write = "overwrite"
"#;

const ORDERS_PER_FILE: usize = 3000;
const BASE_FILES: usize = 6;
const UPDATE_FILES: usize = 6;
const CUSTOMERS: usize = 2000;

/// Base files (day 1) or update files (day 2: updates, deletes, late rows, new orders).
fn write_inputs(scratch: &Scratch, updates: bool) {
    let tiers = ["bronze", "silver", "gold"];
    let (files, day) = if updates { (UPDATE_FILES, 2) } else { (BASE_FILES, 1) };
    for file in 0..files {
        let mut text = String::from("order_id,customer_id,status,amount,updated_at\n");
        for row in 0..ORDERS_PER_FILE {
            let base_id = file * ORDERS_PER_FILE + row;
            let (id, status, timestamp) = match (updates, row % 4) {
                (false, _) => (base_id, "new", "2024-01-01T01:00:00Z"),
                (true, 0) => (base_id, "paid", "2024-01-02T05:00:00Z"),
                (true, 1) => (base_id, "deleted", "2024-01-02T05:00:00Z"),
                // Late: older than what the table holds, never applied.
                (true, 2) => (base_id, "late", "2024-01-01T00:00:00Z"),
                (true, _) => (BASE_FILES * ORDERS_PER_FILE + base_id, "new", "2024-01-02T05:00:00Z"),
            };
            text.push_str(&format!("{id},{},{status},{}.{:02},{timestamp}\n", id % CUSTOMERS, id % 500, id % 100));
        }
        scratch.write(&format!("landing/orders/day{day}-{file:02}.csv"), text);
    }
    let mut text = String::from("customer_id,tier,city,updated_at\n");
    for customer in 0..CUSTOMERS {
        if updates && customer % 3 != 0 {
            continue;
        }
        let tier = tiers[(customer + day) % 3];
        text.push_str(&format!("{customer},{tier},city{},2024-01-{day:02}T00:00:00Z\n", customer % 7));
    }
    scratch.write(&format!("landing/customers/day{day}.csv"), text);
}

fn dump(scratch: &Scratch) -> Vec<String> {
    let queries: Vec<String> = ["silver.orders", "silver.customers", "gold.revenue_by_tier"]
        .iter()
        .map(|t| format!("SELECT * FROM delta_scan('{}') ORDER BY ALL", scratch.table(t)))
        .collect();
    duckdb_batch(&queries).iter().map(|rows| serde_json::to_string(rows).unwrap()).collect()
}

#[test]
fn killed_transform_runs_leave_whole_versions_and_converge() {
    // The reference: the same inputs, never interrupted.
    let reference = Scratch::new();
    reference.pipeline(PIPELINE);
    write_inputs(&reference, false);
    reference.run_ok();
    write_inputs(&reference, true);
    let started = std::time::Instant::now();
    reference.run_ok();
    let full_run = started.elapsed();
    let expected = dump(&reference);

    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    write_inputs(&scratch, false);
    scratch.run_ok();
    write_inputs(&scratch, true);
    // Kill each run a little later into the work than the one before (with jitter), so
    // kills land in ingestion, in the merge, in SCD2 and in the gold overwrite.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5cd2);
    let mut kills = 0;
    for attempt in 1..=10u32 {
        let mut child = Command::new(inlet_bin()).args(["run"]).current_dir(scratch.dir.path()).spawn().unwrap();
        let at = full_run.mul_f64(f64::from(attempt) / 8.0 * rng.random_range(0.8..1.2));
        std::thread::sleep(at.max(Duration::from_millis(20)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        let versions: Vec<usize> = ["bronze.orders", "silver.orders", "silver.customers", "gold.revenue_by_tier"]
            .iter()
            .map(|t| {
                std::fs::read_dir(std::path::Path::new(&scratch.table(t)).join("_delta_log")).map_or(0, |d| d.count())
            })
            .collect();
        eprintln!(
            "attempt {attempt}: killed={kills} log entries (bronze, silver.orders, silver.customers, gold) {versions:?}"
        );
        // Whatever the moment of the kill, every table reads as a whole version.
        for table in ["silver.orders", "silver.customers"] {
            if std::path::Path::new(&scratch.table(table)).join("_delta_log").exists() {
                let key = if table == "silver.orders" { "order_id" } else { "(customer_id, _valid_from)" };
                let rows = inlet_tests::duckdb(&format!(
                    "SELECT count(*) - count(DISTINCT {key}) FROM delta_scan('{}')",
                    scratch.table(table)
                ));
                assert_eq!(rows[0][0].as_i64(), Some(0), "{table} has a doubled key after a kill");
            }
        }
    }
    assert!(kills > 0, "no run was killed; the test proves nothing");
    scratch.run_ok();
    let again = scratch.run_ok();
    for table in again.report()["tables"].as_array().unwrap() {
        assert_eq!(table["status"], "up_to_date", "{table}");
    }
    assert_eq!(dump(&scratch), expected, "killed runs converge to the uninterrupted result");
    let current = inlet_tests::duckdb(&format!(
        "SELECT count(*) FROM (SELECT customer_id FROM delta_scan('{}') WHERE _is_current GROUP BY customer_id HAVING count(*) > 1)",
        scratch.table("silver.customers")
    ));
    assert_eq!(current[0][0].as_i64(), Some(0), "one current row per key");
}

#[test]
fn two_concurrent_runs_of_one_table_apply_its_input_once() {
    let scratch = Scratch::new();
    scratch.pipeline(
        r#"
[pipeline]
name = "race"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"

[tables."silver.log"]
sql = "SELECT order_id, amount FROM bronze.orders"
write = "append"
incremental = true
"#,
    );
    for round in 0..4 {
        let mut text = String::from("order_id,amount\n");
        for row in 0..20_000 {
            text.push_str(&format!("{},{}\n", round * 20_000 + row, row % 97));
        }
        scratch.write(&format!("landing/round-{round}.csv"), text);
        let ingest = scratch.inlet(&["run", "--source", "orders"]);
        assert_eq!(ingest.code, Some(0), "{}", ingest.stderr);
        let racers: Vec<_> = (0..2)
            .map(|_| {
                Command::new(inlet_bin())
                    .args(["run", "--select", "silver.log", "--output", "json"])
                    .current_dir(scratch.dir.path())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for racer in racers {
            let output = racer.wait_with_output().unwrap();
            // The loser either found the work done or lost the commit race (a retryable error).
            assert!(matches!(output.status.code(), Some(0) | Some(2)), "{}", String::from_utf8_lossy(&output.stderr));
        }
        scratch.run_ok();
        let expected = (round + 1) * 20_000;
        assert_eq!(
            scratch.rows_and_distinct("silver.log", "order_id"),
            (expected, expected),
            "round {round}: rows doubled or lost"
        );
    }
}
