//! Data-file statistics readers prune by: a long text column gets truncated bounds (not
//! none) that still hold every value, and the columns readers filter on (inlet's metadata
//! columns, a derived table's keys) keep their statistics past the table's first 32, with
//! `delta.dataSkippingStatsColumns` declaring them so that readers look for them (DuckDB's
//! scan of the delta extension prunes by them).

use inlet_tests::{Scratch, single_i64};
use serde_json::Value;

/// A CSV source landing in `bronze.wide`; tests add its schema hints and derived tables.
const WIDE_SOURCE: &str = "[pipeline]
name = \"stats\"

[sources.wide]
type = \"files\"
path = \"landing\"
format = \"csv\"
target = \"bronze.wide\"
";

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
    scratch.pipeline(&format!("{WIDE_SOURCE}\n[tables.\"silver.wide\"]\nsql = \"SELECT * FROM bronze.wide\"\nwrite = \"merge\"\nkeys = [\"c40\"]\n"));
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

    // The tables declare the columns past the 32nd that readers filter on.
    let declared = |table: &str| {
        let metadata = metadata_configuration(&scratch.path(table));
        metadata["delta.dataSkippingStatsColumns"].as_str().unwrap_or_default().to_owned()
    };
    let first_32 = format!("note,{}", columns[..31].join(","));
    assert_eq!(declared("lake/bronze/wide"), format!("{first_32},_source_file,_source_row,_load_id,_ingested_at"));
    assert_eq!(declared("lake/silver/wide"), format!("{first_32},c40,_source_file,_source_row,_load_id,_ingested_at"));

    // A second file, a second run: two data files per table. DuckDB skips the file whose
    // statistics rule a row out for the declared columns, and cannot for the others.
    let mut csv = format!("note,{}\n", columns.join(","));
    for row in 90..95 {
        let values: Vec<String> = (1..=40).map(|c| (row * 100 + c).to_string()).collect();
        csv.push_str(&format!("later,{}\n", values.join(",")));
    }
    scratch.write("landing/later.csv", csv);
    scratch.run_ok();
    let files_scanned = |table: &str, filter: &str| {
        let plan = scratch.duckdb(table, &format!("EXPLAIN ANALYZE SELECT count(*) FROM {{t}} WHERE {filter}"));
        let text = plan[0][1].as_str().unwrap().to_owned();
        let line = text.lines().find(|l| l.contains("Scanning Files:")).unwrap_or_else(|| panic!("{text}"));
        line.split("Scanning Files:").nth(1).unwrap().trim_matches(|c: char| c.is_whitespace() || c == '│').to_owned()
    };
    assert_eq!(files_scanned("silver.wide", "c40 = 340"), "1/2");
    assert_eq!(files_scanned("bronze.wide", "_source_file = 'later.csv'"), "1/2");
    assert_eq!(files_scanned("bronze.wide", "c31 = 9031"), "1/2");
    // c40 has no statistics in bronze (no key there): every file is read.
    assert_eq!(files_scanned("bronze.wide", "c40 = 9040"), "2/2");
}

/// The `configuration` of the table's newest `metaData` in its commit files.
fn metadata_configuration(dir: &std::path::Path) -> Value {
    let mut commits: Vec<_> = std::fs::read_dir(dir.join("_delta_log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    commits.sort();
    let mut configuration = Value::Null;
    for commit in commits {
        for line in std::fs::read_to_string(commit).unwrap().lines() {
            let action: Value = serde_json::from_str(line).unwrap();
            if let Some(found) = action["metaData"].get("configuration") {
                configuration = found.clone();
            }
        }
    }
    configuration
}

/// The declared list names only columns with a min and max: Spark validates
/// `delta.dataSkippingStatsColumns` whenever it changes a table's metadata, and refuses a
/// list naming a boolean (or a binary, list or map) column.
#[test]
fn spark_accepts_the_declared_statistics_columns_of_a_table_with_booleans() {
    let scratch = Scratch::new();
    let columns: Vec<String> = (1..=35).map(|i| format!("c{i:02}")).collect();
    scratch.pipeline(&format!("{WIDE_SOURCE}schema = {{ flag = \"boolean\", c01 = \"bigint\" }}\n"));
    let mut csv = format!("flag,{}\n", columns.join(","));
    for row in 0..3 {
        let values: Vec<String> = (1..=35).map(|c| (row * 100 + c).to_string()).collect();
        csv.push_str(&format!("{},{}\n", row % 2 == 0, values.join(",")));
    }
    scratch.write("landing/a.csv", csv);
    scratch.run_ok();
    let table = scratch.path("lake/bronze/wide");
    let metadata = metadata_configuration(&table);
    let declared = metadata["delta.dataSkippingStatsColumns"].as_str().unwrap_or_default().to_owned();
    assert_eq!(declared, format!("{},_source_file,_source_row,_load_id,_ingested_at", columns[..31].join(",")));
    let Some(address) = inlet_tests::readers::service() else { return };
    let path = table.display();
    // A metadata change by Spark validates the list (it fails naming `flag` when listed).
    inlet_tests::readers::sql(
        &address,
        "spark",
        &format!("ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('inlet.test.touched' = 'yes')"),
        &[],
    );
    let counts = inlet_tests::readers::sql(
        &address,
        "spark",
        &format!("SELECT count(*) FROM delta.`{path}` WHERE _source_file = 'a.csv' AND flag"),
        &[],
    );
    assert!(counts.len() == 1 && (counts[0][0] == "2" || counts[0][0] == 2), "{counts:?}");
}
