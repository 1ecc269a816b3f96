//! `inlet optimize` and `inlet vacuum` on a lake fed many small commits: far fewer files,
//! the same rows for every reader, incremental readers that do not read compacted rows
//! again, time travel to a retained version, and a vacuum that keeps what retained
//! versions need unless told otherwise.

use inlet_tests::{Scratch, single_i64};
use serde_json::Value;

const PIPELINE: &str = r#"
[pipeline]
name = "maintenance"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
max_files_per_commit = 1
schema = { order_id = "bigint", amount = "decimal(10,2)" }

[tables."silver.orders"]
sql = "SELECT order_id, status, amount FROM bronze.orders"
write = "merge"
keys = ["order_id"]
incremental = true
"#;

/// Data files on disk under the table (not the log, not `_inlet/`).
fn parquet_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".parquet")))
        .count()
}

#[test]
fn optimize_and_vacuum_shrink_a_lake_of_small_commits_and_keep_every_row() {
    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    for i in 1..=500 {
        scratch.write(&format!("landing/{i:03}.csv"), format!("order_id,status,amount\n{i},new,{i}.25\n"));
    }
    let run = scratch.run_ok();
    assert_eq!(run.source("orders")["commits"].as_array().map(Vec::len), Some(500));
    let bronze = scratch.path("lake/bronze/orders");
    assert_eq!(parquet_files(&bronze), 500);
    let sum = || single_i64(&scratch.duckdb("bronze.orders", "SELECT count(*) * 1000000 + sum(order_id) FROM {t}"));
    let before = sum();
    let last_ingest = history_of(&scratch, "bronze.orders").iter().filter_map(|v| v["version"].as_i64()).max().unwrap();

    // Optimize: one commit, the same rows, far fewer files in the current version.
    let optimized = scratch.inlet(&["optimize", "bronze.orders", "--output", "json"]);
    assert_eq!(optimized.code, Some(0), "{}", optimized.stderr);
    let report: Value = serde_json::from_str(&optimized.stdout).unwrap();
    assert_eq!(report["files_removed"], 500, "{report}");
    assert_eq!(report["files_added"], 1, "{report}");
    assert_eq!(report["version"], last_ingest + 1, "{report}");
    assert_eq!(sum(), before);
    let versions = history_of(&scratch, "bronze.orders");
    let newest = versions.iter().find(|v| v["version"] == last_ingest + 1).unwrap();
    assert_eq!(newest["operation"], "OPTIMIZE", "{newest}");
    // Nothing left to compact: no version.
    let again = scratch.inlet(&["optimize", "bronze.orders", "--output", "json"]);
    assert_eq!(serde_json::from_str::<Value>(&again.stdout).unwrap()["version"], Value::Null, "{}", again.stdout);

    // The next run lands one new file; silver reads only it, not the compacted rows.
    scratch.write("landing/501.csv", "order_id,status,amount\n501,new,1.00\n");
    let run = scratch.run_ok();
    assert_eq!(run.source("orders")["rows"], 1);
    let silver = &run.report()["tables"][0];
    assert_eq!(
        (silver["rows"]["inserted"].as_i64(), silver["rows"]["unchanged"].as_i64()),
        (Some(1), Some(0)),
        "{silver}"
    );

    // Time travel to the last version before the optimize still reads its 500 files.
    let as_of = last_ingest.to_string();
    let old =
        scratch.inlet(&["query", "SELECT count(*) AS n FROM bronze.orders", "--as-of", &as_of, "--output", "json"]);
    assert_eq!(old.code, Some(0), "{}", old.stderr);
    let old: Value = serde_json::from_str(&old.stdout).unwrap();
    assert_eq!(old[0]["n"], 500, "{old}");

    // Vacuum keeps what the retention covers: the default keeps every file (7 days); a
    // shorter retention than the table's is refused unless forced.
    let dry = scratch.inlet(&["vacuum", "bronze.orders", "--dry-run", "--output", "json"]);
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    assert_eq!(serde_json::from_str::<Value>(&dry.stdout).unwrap()["files"].as_array().map(Vec::len), Some(0));
    let refused = scratch.inlet(&["vacuum", "bronze.orders", "--retain-hours", "0"]);
    assert_ne!(refused.code, Some(0));
    assert!(refused.stderr.contains("--force") && refused.stderr.contains("bronze.orders"), "{}", refused.stderr);
    let listed =
        scratch.inlet(&["vacuum", "bronze.orders", "--retain-hours", "0", "--force", "--dry-run", "--output", "json"]);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed["files"].as_array().map(Vec::len), Some(500), "{listed}");
    assert_eq!(parquet_files(&bronze), 502, "a dry run deletes nothing");
    let vacuumed = scratch.inlet(&["vacuum", "bronze.orders", "--retain-hours", "0", "--force"]);
    assert_eq!(vacuumed.code, Some(0), "{}", vacuumed.stderr);
    assert_eq!(parquet_files(&bronze), 2, "500 small files down to the compacted one and the new one");
    // The versions before the optimize lost their files: time travel and restore say so.
    // (A sum: a count is answered from the log's statistics, without reading a file.)
    let old = scratch.inlet(&["query", "SELECT sum(amount) AS n FROM bronze.orders", "--as-of", &as_of]);
    assert_eq!(old.code, Some(1), "{}{}", old.stdout, old.stderr);
    assert!(old.stderr.contains("bronze.orders") && old.stderr.contains("VACUUM"), "{}", old.stderr);
    let restore = scratch.inlet(&["restore", "bronze.orders", "--version", &as_of]);
    assert_eq!(restore.code, Some(1), "{}{}", restore.stdout, restore.stderr);
    assert!(restore.stderr.contains("bronze.orders") && restore.stderr.contains("VACUUM"), "{}", restore.stderr);
    assert_eq!(sum(), before + 1_000_000 + 501);
    // The ledger and the log still say every file is in: a re-run lands nothing.
    let rerun = scratch.run_ok();
    assert_eq!(rerun.source("orders")["rows"], 0);
    // A full vacuum also deletes files no commit added (a run that died after staging),
    // never what `_inlet/` keeps beside the table.
    let any_data_file = std::fs::read_dir(&bronze)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".parquet")))
        .unwrap()
        .path();
    let orphan = bronze.join("part-00000-orphan-of-a-dead-run.snappy.parquet");
    std::fs::copy(any_data_file, &orphan).unwrap();
    let vacuum_json = |args: &[&str]| -> Value {
        let out = scratch.inlet(&[&["vacuum", "bronze.orders", "--output", "json"], args].concat());
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    };
    let lite = vacuum_json(&["--retain-hours", "0", "--force", "--dry-run"]);
    // (It lists the log's expired removes again, whose files are gone already.)
    let named = |report: &Value| {
        report["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().ends_with("orphan-of-a-dead-run.snappy.parquet"))
    };
    assert!(!named(&lite), "lite leaves a file no commit added: {lite}");
    // A fresh one may be a run's staged group about to commit: kept, even when forced.
    let full = vacuum_json(&["--retain-hours", "0", "--force", "--full", "--dry-run"]);
    assert!(!named(&full), "a full vacuum took a file staged minutes ago: {full}");
    // One older than the week a staged group may still be committed in is an orphan.
    let eight_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(8 * 24 * 3600);
    std::fs::File::options().write(true).open(&orphan).unwrap().set_modified(eight_days_ago).unwrap();
    let full = vacuum_json(&["--retain-hours", "0", "--force", "--full", "--dry-run"]);
    assert!(named(&full), "{full}");
    let files: Vec<&str> = full["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(files.iter().all(|f| !f.contains("_inlet") && !f.contains("_delta_log")), "{files:?}");
    std::fs::remove_file(&orphan).unwrap();
    // Vacuum's own commits say inlet made them.
    let versions = history_of(&scratch, "bronze.orders");
    assert!(
        versions.iter().any(|v| v["operation"] == "VACUUM END"
            && v["user_metadata"].as_str().is_some_and(|m| m.starts_with("inlet vacuum"))),
        "{versions:?}"
    );
}

/// The rows `inlet query` gives for `sql`, as JSON.
fn query(scratch: &Scratch, sql: &str, extra: &[&str]) -> Result<Value, String> {
    let out = scratch.inlet(&[&["query", sql, "--output", "json"], extra].concat());
    if out.code == Some(0) { Ok(serde_json::from_str(&out.stdout).unwrap()) } else { Err(out.stderr) }
}

fn history_of(scratch: &Scratch, table: &str) -> Vec<Value> {
    let out = scratch.inlet(&["history", table, "--output", "json", "--limit", "1000"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    serde_json::from_str::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

#[test]
fn a_log_policy_checkpoints_and_cleans_the_log_while_history_ledgers_and_lineage_survive() {
    let scratch = Scratch::new();
    scratch.pipeline(&PIPELINE.replace(
        "name = \"maintenance\"\n",
        "name = \"maintenance\"\n\n[pipeline.maintenance]\ncheckpoint_interval = 2\nlog_retention_hours = 0\n",
    ));
    for i in 1..=12 {
        scratch.write(&format!("landing/{i:03}.csv"), format!("order_id,status,amount\n{i},new,{i}.25\n"));
    }
    scratch.run_ok();
    // The run created the tables, then set the policy on them in a commit of its own.
    let log = scratch.path("lake/bronze/orders/_delta_log");
    let properties = std::fs::read_to_string(log.join("00000000000000000012.json")).unwrap();
    assert!(
        properties.contains("\"delta.checkpointInterval\":\"2\"")
            && properties.contains("\"delta.logRetentionDuration\":\"interval 0 hours\""),
        "{properties}"
    );
    for i in 13..=22 {
        scratch.write(&format!("landing/{i:03}.csv"), format!("order_id,status,amount\n{i},new,{i}.25\n"));
    }
    scratch.run_ok();
    // Checkpoints every 2 commits; commit files below the latest checkpoint are gone.
    let last: Value = serde_json::from_str(&std::fs::read_to_string(log.join("_last_checkpoint")).unwrap()).unwrap();
    assert_eq!(last["version"], 21, "{last}");
    assert!(last.get("parts").is_none_or(Value::is_null), "`parts` in {last}");
    inlet_tests::check_page_indexes(&log.join("00000000000000000021.checkpoint.parquet"));
    assert!(!log.join("00000000000000000000.json").exists(), "commit 0 outlived the log retention");
    assert!(!log.join("00000000000000000020.json").exists());
    // History still lists every version, the old ones from the run history.
    let versions = history_of(&scratch, "bronze.orders");
    let listed: Vec<i64> = versions.iter().filter_map(|v| v["version"].as_i64()).collect();
    assert_eq!(listed, (0..=22).rev().collect::<Vec<_>>(), "{versions:?}");
    assert!(
        versions.iter().all(|v| v["operation"].as_str().is_some_and(|o| !o.is_empty() && o != "unknown")),
        "{versions:?}"
    );
    assert!(versions.iter().any(|v| v["version"] == 0 && v["from"] == "run history"), "{versions:?}");

    // Another writer's commit lands on a checkpoint: the sources' and the derived table's
    // own last commits expire, and their side files carry them on.
    for table in ["bronze.orders", "silver.orders"] {
        let optimized = scratch.inlet(&["optimize", table, "--output", "json"]);
        assert_eq!(optimized.code, Some(0), "{}", optimized.stderr);
    }
    assert!(!log.join("00000000000000000022.json").exists(), "the source's last commit should have expired");
    scratch.write("landing/023.csv", "order_id,status,amount\n23,new,23.25\n");
    let run = scratch.run_ok();
    assert_eq!(run.source("orders")["rows"], 1, "{}", run.stdout);
    let silver = &run.report()["tables"][0];
    assert_eq!(silver["rows"]["inserted"], 1, "{silver}");
    assert_eq!(scratch.inlet(&["run", "--output", "json"]).code, Some(0));
    let totals =
        query(&scratch, "SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM silver.orders", &[]).unwrap();
    assert_eq!((totals[0]["n"].as_i64(), totals[0]["d"].as_i64()), (Some(23), Some(23)), "{totals}");
    let bronze = query(&scratch, "SELECT count(*) AS n FROM bronze.orders", &[]).unwrap();
    assert_eq!(bronze[0]["n"], 23, "{bronze}");

    // Time travel to a version whose commit is gone says so.
    let gone = query(&scratch, "SELECT count(*) AS n FROM bronze.orders", &["--as-of", "3"]).unwrap_err();
    assert!(gone.contains("bronze.orders") && gone.contains("log retention"), "{gone}");
    // So does a time before the oldest commit left (delta-rs would read that commit instead).
    let before = query(&scratch, "SELECT count(*) AS n FROM bronze.orders", &["--as-of", "2000-01-01T00:00:00Z"]);
    let before = before.unwrap_err();
    assert!(before.contains("bronze.orders") && before.contains("oldest commit left"), "{before}");
}

#[test]
fn optimize_where_compacts_only_the_partitions_it_names() {
    let scratch = Scratch::new();
    scratch.pipeline(&format!(
        "{PIPELINE}\n[tables.\"silver.by_status\"]\nsql = \"SELECT order_id, status, amount FROM bronze.orders\"\nwrite = \"append\"\nincremental = true\npartition_by = [\"status\"]\n"
    ));
    for i in 1..=6 {
        let status = if i % 2 == 0 { "paid" } else { "new" };
        scratch.write(&format!("landing/{i:03}.csv"), format!("order_id,status,amount\n{i},{status},{i}.25\n"));
        scratch.run_ok();
    }
    let table = scratch.path("lake/silver/by_status");
    assert_eq!((parquet_files(&table.join("status=new")), parquet_files(&table.join("status=paid"))), (3, 3));
    let refused = scratch.inlet(&["optimize", "silver.by_status", "--where", "amount > 1"]);
    assert_ne!(refused.code, Some(0));
    assert!(
        refused.stderr.contains("silver.by_status") && refused.stderr.contains("`amount` is not a partition column"),
        "{}",
        refused.stderr
    );
    let optimized = scratch.inlet(&["optimize", "silver.by_status", "--where", "status = 'new'", "--output", "json"]);
    assert_eq!(optimized.code, Some(0), "{}", optimized.stderr);
    let report: Value = serde_json::from_str(&optimized.stdout).unwrap();
    assert_eq!((report["files_removed"].as_i64(), report["files_added"].as_i64()), (Some(3), Some(1)), "{report}");
    let vacuumed = scratch.inlet(&["vacuum", "silver.by_status", "--retain-hours", "0", "--force"]);
    assert_eq!(vacuumed.code, Some(0), "{}", vacuumed.stderr);
    assert_eq!((parquet_files(&table.join("status=new")), parquet_files(&table.join("status=paid"))), (1, 3));
    let rows =
        query(&scratch, "SELECT status, count(*) AS n FROM silver.by_status GROUP BY status ORDER BY status", &[])
            .unwrap();
    assert_eq!(rows, serde_json::json!([{"status": "new", "n": 3}, {"status": "paid", "n": 3}]));
    let history = history_of(&scratch, "silver.by_status");
    assert!(
        history.iter().any(|v| v["operation"] == "OPTIMIZE"
            && v["user_metadata"].as_str().is_some_and(|m| m.contains("where status = 'new'"))),
        "{history:?}"
    );
}

/// Sets the flag when dropped, so the maintenance thread stops even when the test panics.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn vacuum_and_optimize_racing_runs_lose_nothing() {
    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    scratch.write(
        "landing/000.csv",
        "order_id,status,amount
0,new,1.00
",
    );
    scratch.run_ok();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dir = scratch.dir.path().to_owned();
    let maintenance = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for args in [
                    &["optimize", "bronze.orders"][..],
                    &["vacuum", "bronze.orders", "--retain-hours", "0", "--force", "--full"][..],
                ] {
                    let out = std::process::Command::new(inlet_tests::inlet_bin())
                        .args(args)
                        .current_dir(&dir)
                        .output()
                        .unwrap();
                    // Losing a commit race to a run is an outcome; the next round tries again.
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    assert!(out.status.success() || stderr.to_lowercase().contains("conflict"), "{args:?}: {stderr}");
                }
            }
        })
    };
    let guard = StopOnDrop(stop);
    let first = history_of(&scratch, "bronze.orders")[0]["version"].as_i64().unwrap();
    let mut expected = 1;
    for round in 0..8 {
        for i in 0..5 {
            let id = round * 5 + i + 1;
            scratch.write(&format!("landing/{id:03}.csv"), format!("order_id,status,amount\n{id},new,1.00\n"));
            expected += 1;
        }
        // A run that lost a commit race fails retryably and is run again (a few times at most).
        let mut tries = 0;
        loop {
            let run = scratch.inlet(&["run", "--output", "json"]);
            if run.code == Some(0) {
                break;
            }
            tries += 1;
            assert!(tries < 5 && run.stdout.contains("\"retryable\": true"), "{}\n{}", run.stdout, run.stderr);
        }
    }
    drop(guard);
    maintenance.join().unwrap();
    scratch.run_ok();
    // Maintenance did commit between the runs.
    let versions = history_of(&scratch, "bronze.orders");
    let between =
        |operation: &str| versions.iter().any(|v| v["operation"] == operation && v["version"].as_i64() > Some(first));
    assert!(between("OPTIMIZE") && between("VACUUM END"), "{versions:?}");
    // Every row once, every file the log names on disk (a sum reads each one).
    let totals = query(
        &scratch,
        "SELECT count(*) AS n, count(DISTINCT order_id) AS d, count(DISTINCT _source_file) AS f, sum(amount) AS s FROM bronze.orders",
        &[],
    )
    .unwrap();
    let want = (Some(expected), Some(expected), Some(expected));
    assert_eq!((totals[0]["n"].as_i64(), totals[0]["d"].as_i64(), totals[0]["f"].as_i64()), want, "{totals}");
    assert_eq!(
        totals[0]["s"].as_str().and_then(|s| s.parse::<f64>().ok()).or(totals[0]["s"].as_f64()),
        Some(expected as f64),
        "{totals}"
    );
    let silver = query(&scratch, "SELECT sum(amount) AS s, count(*) AS n FROM silver.orders", &[]).unwrap();
    assert_eq!(silver[0]["n"], expected, "{silver}");
}

/// The pipeline with `silver.log`, an incremental append from bronze, and `maintenance` (a
/// `[pipeline.maintenance]` body, or nothing).
fn with_incremental_append(scratch: &Scratch, maintenance: &str) {
    let pipeline = if maintenance.is_empty() {
        PIPELINE.to_owned()
    } else {
        PIPELINE.replace(
            "name = \"maintenance\"\n",
            &format!("name = \"maintenance\"\n\n[pipeline.maintenance]\n{maintenance}"),
        )
    };
    scratch.pipeline(&format!(
        "{pipeline}\n[tables.\"silver.log\"]\nsql = \"SELECT order_id, amount FROM bronze.orders\"\nwrite = \"append\"\nincremental = true\n"
    ));
}

/// Lands one order file each for ids `from..=to`.
fn land(scratch: &Scratch, from: i64, to: i64) {
    for i in from..=to {
        scratch.write(&format!("landing/{i:03}.csv"), format!("order_id,status,amount\n{i},new,{i}.25\n"));
    }
}

/// silver.log's rows and distinct orders, as `rows * 1000 + distinct`.
fn silver_log(scratch: &Scratch) -> i64 {
    single_i64(&scratch.duckdb("silver.log", "SELECT count(*) * 1000 + count(DISTINCT order_id) FROM {t}"))
}

/// A compaction that would mix rows an incremental append has not read with rows it has
/// waits until that table has caught up (or `--force`, after which the append says it
/// needs one full run); once it has, the compaction goes ahead and the append reads only
/// what lands after it.
#[test]
fn optimize_waits_for_an_incremental_append_that_lags() {
    let scratch = Scratch::new();
    with_incremental_append(&scratch, "");
    let land = |from: i64, to: i64| land(&scratch, from, to);
    let silver = || silver_log(&scratch);
    land(1, 3);
    scratch.run_ok();
    assert_eq!(silver(), 3003);

    // Only the source runs: silver.log has not read bronze's last three versions.
    land(4, 6);
    let sources_only = scratch.inlet(&["run", "--source", "orders"]);
    assert_eq!(sources_only.code, Some(0), "{}", sources_only.stderr);
    let refused = scratch.inlet(&["optimize", "bronze.orders"]);
    assert_eq!(refused.code, Some(1), "{}{}", refused.stdout, refused.stderr);
    assert!(refused.stderr.contains("silver.log") && refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(parquet_files(&scratch.path("lake/bronze/orders")), 6, "nothing compacted");

    // Caught up, the compaction goes ahead, and the next append reads only the new file.
    scratch.run_ok();
    assert_eq!(silver(), 6006);
    let optimized = scratch.inlet(&["optimize", "bronze.orders", "--output", "json"]);
    assert_eq!(optimized.code, Some(0), "{}", optimized.stderr);
    assert_eq!(serde_json::from_str::<Value>(&optimized.stdout).unwrap()["files_removed"], 6);
    land(7, 7);
    scratch.run_ok();
    assert_eq!(silver(), 7007);

    // Forced while silver.log lags: its next run refuses rather than reading rows twice, and
    // says how to go on.
    land(8, 9);
    assert_eq!(scratch.inlet(&["run", "--source", "orders"]).code, Some(0));
    let forced = scratch.inlet(&["optimize", "bronze.orders", "--force"]);
    assert_eq!(forced.code, Some(0), "{}", forced.stderr);
    let run = scratch.inlet(&["run", "--output", "json"]);
    assert_ne!(run.code, Some(0), "{}", run.stdout);
    assert!(
        run.stdout.contains("incremental = false") || run.stderr.contains("incremental = false"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(silver(), 7007);
}

/// Log cleanup keeps the commits an incremental append downstream has not read: without
/// them its next run could not tell new rows from old and would refuse.
#[test]
fn log_cleanup_keeps_the_commits_a_lagging_incremental_append_needs() {
    let scratch = Scratch::new();
    with_incremental_append(&scratch, "checkpoint_interval = 2\nlog_retention_hours = 0\n");
    let land = |from: i64, to: i64| land(&scratch, from, to);
    let silver = || silver_log(&scratch);
    land(1, 3);
    scratch.run_ok();
    assert_eq!(silver(), 3003);
    let log = scratch.path("lake/bronze/orders/_delta_log");
    // Versions 0-2 are the three files silver.log read; 3 set the policy.
    assert!(std::fs::read_to_string(log.join("00000000000000000003.json")).unwrap().contains("checkpointInterval"));

    // Only the source runs, six commits and checkpoints past what silver.log read.
    land(4, 9);
    let sources_only = scratch.inlet(&["run", "--source", "orders"]);
    assert_eq!(sources_only.code, Some(0), "{}", sources_only.stderr);
    let last: Value = serde_json::from_str(&std::fs::read_to_string(log.join("_last_checkpoint")).unwrap()).unwrap();
    assert!(last["version"].as_i64() >= Some(8), "{last}");
    for version in 3..=9 {
        assert!(log.join(format!("{version:020}.json")).exists(), "commit {version} was cleaned while silver.log lags");
    }

    // silver.log reads just the six new rows; then nothing holds the log back.
    let run = scratch.run_ok();
    let report = run.report();
    let log_table = report["tables"].as_array().unwrap().iter().find(|t| t["table"] == "silver.log").unwrap();
    assert_eq!(log_table["rows"]["inserted"], 6, "{log_table}");
    assert_eq!(silver(), 9009);
    // bronze's next commit cleans its log again, up to what silver.log has now read.
    land(10, 10);
    scratch.run_ok();
    assert_eq!(silver(), 10010);
    assert!(!log.join("00000000000000000003.json").exists(), "cleanup did not resume once silver.log caught up");
}

/// `--zorder-by` goes through delta-rs' optimize (not inlet's streaming compaction): one
/// OPTIMIZE version that rewrites every file into one, rows intact, and an incremental
/// silver that reads nothing again.
#[test]
fn optimize_zorder_rewrites_the_files_in_one_version_and_keeps_every_row() {
    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    for i in 1..=6 {
        scratch.write(&format!("landing/{i:03}.csv"), format!("order_id,status,amount\n{i},new,{i}.25\n"));
    }
    scratch.run_ok();
    let sum = || single_i64(&scratch.duckdb("bronze.orders", "SELECT count(*) * 1000000 + sum(order_id) FROM {t}"));
    let before = sum();
    let optimized = scratch.inlet(&["optimize", "bronze.orders", "--zorder-by", "order_id,amount", "--output", "json"]);
    assert_eq!(optimized.code, Some(0), "{}", optimized.stderr);
    let report: Value = serde_json::from_str(&optimized.stdout).unwrap();
    assert_eq!((report["files_removed"].as_i64(), report["files_added"].as_i64()), (Some(6), Some(1)), "{report}");
    assert_eq!(sum(), before);
    let history = history_of(&scratch, "bronze.orders");
    let newest = history.iter().find(|v| v["version"] == report["version"]).unwrap();
    assert_eq!(newest["operation"], "OPTIMIZE", "{newest}");
    let refused = scratch.inlet(&["optimize", "bronze.orders", "--zorder-by", "nope"]);
    assert_ne!(refused.code, Some(0), "{}", refused.stdout);
    assert!(refused.stderr.contains("bronze.orders"), "{}", refused.stderr);
    scratch.write("landing/007.csv", "order_id,status,amount\n7,new,7.25\n");
    let run = scratch.run_ok();
    let silver = &run.report()["tables"][0];
    assert_eq!(silver["rows"]["inserted"], 1, "{silver}");
    assert_eq!(silver["rows"]["unchanged"], 0, "{silver}");
}
