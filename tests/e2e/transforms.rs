//! Golden tests of derived tables (silver, gold).
//!
//! Each `tests/golden/transforms/<case>/` holds an `inlet.toml` and `steps/<n>/`: before run
//! `n`, the step's files are copied into the case directory (typically new landing files);
//! a step with a `FAIL` file expects the run to fail with that text in a table's error.
//! After each run every derived table is read back by DuckDB (all columns, every row,
//! sorted) and compared, together with the run's row counts and table version, with
//! `expected/<n>.txt`. After the last step one more run must change nothing.
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
        let columns: Vec<String> = results[index * 2]
            .iter()
            .map(|c| format!("{} {}", c[0].as_str().unwrap(), c[1].as_str().unwrap().to_lowercase()))
            .collect();
        out.push_str(&format!("columns: {}\n", columns.join(", ")));
        for row in &results[index * 2 + 1] {
            out.push_str(&serde_json::to_string(row).unwrap());
            out.push('\n');
        }
    }
    out
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
