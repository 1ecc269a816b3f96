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
    let history = |table: &str| -> Vec<Value> {
        let out = scratch.inlet(&["history", table, "--output", "json", "--limit", "1000"]);
        serde_json::from_str::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    };
    let last_ingest = history("bronze.orders").iter().filter_map(|v| v["version"].as_i64()).max().unwrap();

    // Optimize: one commit, the same rows, far fewer files in the current version.
    let optimized = scratch.inlet(&["optimize", "bronze.orders", "--output", "json"]);
    assert_eq!(optimized.code, Some(0), "{}", optimized.stderr);
    let report: Value = serde_json::from_str(&optimized.stdout).unwrap();
    assert_eq!(report["files_removed"], 500, "{report}");
    assert_eq!(report["files_added"], 1, "{report}");
    assert_eq!(report["version"], last_ingest + 1, "{report}");
    assert_eq!(sum(), before);
    let versions = history("bronze.orders");
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
    let full = vacuum_json(&["--retain-hours", "0", "--force", "--full", "--dry-run"]);
    assert!(named(&full), "{full}");
    let files: Vec<&str> = full["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(files.iter().all(|f| !f.contains("_inlet") && !f.contains("_delta_log")), "{files:?}");
    std::fs::remove_file(&orphan).unwrap();
    // Vacuum's own commits say inlet made them.
    let versions = history("bronze.orders");
    assert!(
        versions.iter().any(|v| v["operation"] == "VACUUM END"
            && v["user_metadata"].as_str().is_some_and(|m| m.starts_with("inlet vacuum"))),
        "{versions:?}"
    );
}
