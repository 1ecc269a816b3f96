//! Data-file statistics readers prune by: a long text column gets truncated bounds (not
//! none) that still hold every value, and the columns readers filter on (inlet's metadata
//! columns, a derived table's keys) keep their statistics past the table's first 32.

use inlet_tests::{Scratch, single_i64};
use serde_json::Value;

/// The `stats` of every `add` in the commit files of the table at `dir`.
fn add_stats(dir: &std::path::Path) -> Vec<Value> {
    let mut stats = Vec::new();
    for entry in std::fs::read_dir(dir.join("_delta_log")).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().ends_with(".json") {
            continue;
        }
        for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
            let action: Value = serde_json::from_str(line).unwrap();
            if let Some(text) = action["add"]["stats"].as_str() {
                stats.push(serde_json::from_str(text).unwrap());
            }
        }
    }
    stats
}

#[test]
fn long_text_gets_truncated_bounds_and_filtered_columns_keep_stats_past_the_first_32() {
    let scratch = Scratch::new();
    let columns: Vec<String> = (1..=40).map(|i| format!("c{i:02}")).collect();
    scratch.pipeline(
        r#"
[pipeline]
name = "stats"

[sources.wide]
type = "files"
path = "landing"
format = "csv"
target = "bronze.wide"

[tables."silver.wide"]
sql = "SELECT * FROM bronze.wide"
write = "merge"
keys = ["c40"]
"#,
    );
    let long = |i: usize| format!("{}{i:03}", "x".repeat(300));
    let mut csv = format!("note,{}\n", columns.join(","));
    for row in 0..5 {
        let values: Vec<String> = (1..=40).map(|c| (row * 100 + c).to_string()).collect();
        csv.push_str(&format!("{},{}\n", long(row), values.join(",")));
    }
    scratch.write("landing/wide.csv", csv);
    scratch.run_ok();

    let bronze = add_stats(&scratch.path("lake/bronze/wide"));
    assert_eq!(bronze.len(), 1, "{bronze:?}");
    let (min, max) = (&bronze[0]["minValues"], &bronze[0]["maxValues"]);
    // Truncated to a prefix at most 64 characters long, the maximum rounded up: bounds still.
    let (low, high) = (min["note"].as_str().unwrap(), max["note"].as_str().unwrap());
    assert!(low.chars().count() <= 64 && high.chars().count() <= 64, "{low} / {high}");
    assert!(low <= long(0).as_str() && high > long(4).as_str(), "{low} / {high}");
    // The metadata columns sit past column 32 and keep their statistics.
    for column in ["_ingested_at", "_load_id", "_source_file"] {
        assert!(min.get(column).is_some() && max.get(column).is_some(), "no stats for {column}: {min}");
    }
    // `note` is column 1: c31 is the 32nd and last indexed column, c32 the first past them.
    assert!(min.get("c31").is_some() && min.get("c32").is_none(), "indexed columns: {min}");
    let silver = add_stats(&scratch.path("lake/silver/wide"));
    assert!(!silver.is_empty());
    assert!(silver.iter().all(|s| s["minValues"]["c40"] == 40 && s["maxValues"]["c40"] == 440), "{silver:?}");

    // Pruning by the truncated bounds still finds the row.
    let wanted = long(3);
    let sql = format!("SELECT c40 FROM bronze.wide WHERE note = '{wanted}'");
    let out = scratch.inlet(&["query", &sql, "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap(), serde_json::json!([{"c40": 340}]));
    assert_eq!(
        single_i64(&scratch.duckdb("bronze.wide", &format!("SELECT c40 FROM {{t}} WHERE note = '{wanted}'"))),
        340
    );
}
