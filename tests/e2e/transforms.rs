//! Golden tests of derived tables (silver, gold).
//!
//! Each `tests/golden/transforms/<case>/` holds an `inlet.toml` and `steps/<n>/`: before run
//! `n`, the step's files are copied into the case directory (typically new landing files);
//! a step with a `FAIL` file expects the run to fail with that text in a table's error.
//! After each run every derived table is read back by DuckDB (all columns, every row,
//! sorted) and compared, together with the run's row counts and table version, with
//! `expected/<n>.txt`. The change data files (`cdc` actions) of each version committed are
//! read too, straight from the log and the Parquet files, and so is each table's quarantine,
//! with the expectations' outcome of the run. After the last step one more run
//! must change nothing.
//! `INLET_BLESS=1` rewrites the expected files: review the diff.

use std::path::{Path, PathBuf};

use inlet_tests::{Scratch, copy_dir, duckdb_batch, workspace_root};
use serde_json::Value;

fn cases() -> Vec<PathBuf> {
    let root = workspace_root().join("tests/golden/transforms");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    cases
}

fn steps(case: &Path) -> Vec<PathBuf> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(case.join("steps")).unwrap().map(|e| e.unwrap().path()).collect();
    steps.sort_by_key(|p| p.file_name().unwrap().to_string_lossy().parse::<u32>().unwrap());
    steps
}

/// Every derived table of the report, read back by DuckDB.
fn dump(scratch: &Scratch, report: &Value) -> String {
    let mut tables: Vec<&Value> = report["tables"].as_array().unwrap().iter().collect();
    tables.sort_by_key(|t| t["table"].as_str().unwrap().to_owned());
    let existing: Vec<&Value> =
        tables.iter().copied().filter(|t| Path::new(&scratch.table(t["table"].as_str().unwrap())).exists()).collect();
    let mut queries = Vec::new();
    for table in &existing {
        let scan = format!("delta_scan('{}')", scratch.table(table["table"].as_str().unwrap()));
        queries.push(format!("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {scan})"));
        queries.push(format!("SELECT * FROM {scan} ORDER BY ALL"));
        let quarantine = format!("{}__quarantine", scratch.table(table["table"].as_str().unwrap()));
        queries.push(if Path::new(&quarantine).exists() {
            format!("SELECT _source_file, _source_row, _error_code, _error_rule, _raw_record FROM delta_scan('{quarantine}') ORDER BY ALL")
        } else {
            "SELECT 1 WHERE false".to_owned()
        });
        let files = change_files(scratch, table);
        queries.push(if files.is_empty() {
            "SELECT 1 WHERE false".to_owned()
        } else {
            let list: Vec<String> = files.iter().map(|f| format!("'{f}'")).collect();
            format!("SELECT * FROM read_parquet([{}]) ORDER BY ALL", list.join(", "))
        });
    }
    let results = if queries.is_empty() { Vec::new() } else { duckdb_batch(&queries) };
    let mut out = String::new();
    for table in &tables {
        let rows = &table["rows"];
        out.push_str(&format!(
            "== {} [{}] status={} version={} inserted={} updated={} deleted={} unchanged={}\n",
            table["table"].as_str().unwrap(),
            table["write"].as_str().unwrap(),
            table["status"].as_str().unwrap(),
            table["table_version"],
            rows["inserted"],
            rows["updated"],
            rows["deleted"],
            rows["unchanged"],
        ));
        let Some(index) = existing.iter().position(|t| t["table"] == table["table"]) else {
            out.push_str("(no table)\n");
            continue;
        };
        let columns: Vec<String> = results[index * 4]
            .iter()
            .map(|c| format!("{} {}", c[0].as_str().unwrap(), c[1].as_str().unwrap().to_lowercase()))
            .collect();
        out.push_str(&format!("columns: {}\n", columns.join(", ")));
        for expectation in table["quality"]["expectations"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "expect {} [{}] {}: checked={} failed={} dropped={} quarantined={} samples={}{}\n",
                expectation["name"].as_str().unwrap(),
                expectation["action"].as_str().unwrap(),
                expectation["outcome"].as_str().unwrap(),
                expectation["rows_checked"],
                expectation["failed"],
                expectation["dropped"],
                expectation["quarantined"],
                expectation["sample_keys"],
                expectation["detail"].as_str().map(|d| format!(" ({d})")).unwrap_or_default(),
            ));
        }
        for row in &results[index * 4 + 1] {
            out.push_str(&serde_json::to_string(row).unwrap());
            out.push('\n');
        }
        for row in &results[index * 4 + 2] {
            out.push_str(&format!("quarantine: {}\n", serde_json::to_string(row).unwrap()));
        }
        for row in &results[index * 4 + 3] {
            out.push_str(&format!("change: {}\n", serde_json::to_string(row).unwrap()));
        }
    }
    out
}

/// The change data files of the version a run committed, from the table's log.
fn change_files(scratch: &Scratch, table: &Value) -> Vec<String> {
    if table["status"] != "committed" {
        return Vec::new();
    }
    let root = scratch.table(table["table"].as_str().unwrap());
    let version = table["table_version"].as_i64().unwrap();
    let log = std::fs::read_to_string(format!("{root}/_delta_log/{version:020}.json")).unwrap();
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|action| action["cdc"]["path"].as_str().map(|p| format!("{root}/{p}")))
        .collect()
}

#[test]
fn transforms_match_golden_tables() {
    let bless = std::env::var_os("INLET_BLESS").is_some();
    let cases = cases();
    assert!(cases.len() >= 5, "golden transform cases missing");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let scratch = Scratch::new();
        std::fs::copy(case.join("inlet.toml"), scratch.path("inlet.toml")).unwrap();
        let mut versions = String::new();
        let mut last_failed = false;
        for step in steps(case) {
            let n = step.file_name().unwrap().to_string_lossy().into_owned();
            let expected_failure = std::fs::read_to_string(step.join("FAIL")).ok();
            copy_dir(&step, scratch.dir.path());
            let _ = std::fs::remove_file(scratch.path("FAIL"));
            let run = scratch.inlet(&["run", "--output", "json"]);
            let report = run.report();
            match &expected_failure {
                None => assert_eq!(run.code, Some(0), "{name} step {n}:\n{}\n{}", run.stdout, run.stderr),
                Some(text) => {
                    assert_eq!(run.code, Some(1), "{name} step {n} should fail:\n{}", run.stdout);
                    let errors: Vec<String> = report["tables"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t["error"]["message"].to_string())
                        .collect();
                    assert!(
                        errors.iter().any(|e| e.contains(text.trim())),
                        "{name} step {n}: no table error contains `{}`: {errors:?}",
                        text.trim()
                    );
                }
            }
            let actual = dump(&scratch, &report);
            let path = case.join(format!("expected/{n}.txt"));
            if bless {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &actual).unwrap();
            } else {
                let expected = std::fs::read_to_string(&path).unwrap_or_default();
                if expected != actual {
                    failures.push(format!("{name} step {n}:\n--- expected\n{expected}--- actual\n{actual}"));
                }
            }
            versions = report["tables"].to_string();
            last_failed = expected_failure.is_some();
        }
        if last_failed {
            continue;
        }
        // Nothing new: no table gets a new version.
        let run = scratch.run_ok();
        for table in run.report()["tables"].as_array().unwrap() {
            assert_eq!(
                table["status"], "up_to_date",
                "{name}: a run with nothing new changed {table} (before: {versions})"
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The row counts a run reports for one table.
fn counts(run: &inlet_tests::Run, table: &str) -> (u64, u64, u64) {
    let report = run.report();
    let row = report["tables"].as_array().unwrap().iter().find(|t| t["table"] == table).unwrap().clone();
    let rows = &row["rows"];
    (rows["inserted"].as_u64().unwrap(), rows["updated"].as_u64().unwrap(), rows["unchanged"].as_u64().unwrap())
}

#[test]
fn change_data_feed_turned_on_later_is_read_once_whole() {
    let scratch = Scratch::new();
    let pipeline = |feed: bool| {
        format!(
            r#"
[pipeline]
name = "feed"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
schema = {{ order_id = "bigint", updated_at = "timestamp" }}

[tables."silver.orders"]
sql = "SELECT order_id, status, updated_at FROM bronze.orders"
write = "merge"
keys = ["order_id"]
sequence_by = "updated_at"
incremental = true
change_data_feed = {feed}

[tables."gold.orders"]
sql = "SELECT order_id, status FROM silver.orders"
write = "merge"
keys = ["order_id"]
incremental = true
"#
        )
    };
    scratch.pipeline(&pipeline(false));
    let mut first = String::from("order_id,status,updated_at\n");
    for id in 1..=20 {
        first.push_str(&format!("{id},new,2024-01-01T00:00:00Z\n"));
    }
    scratch.write("landing/1.csv", first);
    scratch.run_ok();

    // Turned on now: the versions gold last read have no change data, so gold reads all.
    scratch.pipeline(&pipeline(true));
    scratch.write(
        "landing/2.csv",
        "order_id,status,updated_at\n1,paid,2024-01-02T00:00:00Z\n21,new,2024-01-02T00:00:00Z\n",
    );
    let run = scratch.run_ok();
    assert_eq!(counts(&run, "silver.orders"), (1, 1, 0));
    assert_eq!(counts(&run, "gold.orders"), (1, 1, 19), "a feed not whole is not read");
    let log = std::fs::read_to_string(scratch.path("lake/silver/orders/_delta_log/00000000000000000002.json")).unwrap();
    assert!(log.contains("\"cdc\""), "the merge after turning the feed on writes change data: {log}");

    // From here on the feed is whole: gold reads only the changed rows.
    scratch.write(
        "landing/3.csv",
        "order_id,status,updated_at\n2,paid,2024-01-03T00:00:00Z\n3,paid,2024-01-03T00:00:00Z\n",
    );
    let run = scratch.run_ok();
    assert_eq!(counts(&run, "gold.orders"), (0, 2, 0), "only the feed's rows are read");
    let gold = inlet_tests::duckdb_batch(&[format!(
        "SELECT status, COUNT(*) FROM delta_scan('{}') GROUP BY 1 ORDER BY 1",
        scratch.table("gold.orders")
    )]);
    assert_eq!(serde_json::to_string(&gold[0]).unwrap(), r#"[["new",18],["paid",3]]"#);
}
