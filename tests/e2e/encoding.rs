//! The encodings inlet chooses per column (no dictionary for nearly unique values, delta
//! encoding for ascending integers such as `_source_row`) in files every reader reads: the
//! test checks the files have them, then that DuckDB, Spark, Trino and ClickHouse each read
//! the bronze table and a merged silver table as inlet does.

use inlet_tests::{Scratch, readers};

const PIPELINE: &str = r#"[pipeline]
name = "encoding"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
schema = { id = "bigint", customer = "int", ts = "timestamp", amount = "decimal(12,2)" }

[tables."silver.orders"]
sql = "SELECT id, customer, status, note, ts, amount FROM bronze.orders"
write = "merge"
keys = ["id"]
incremental = true
"#;

/// `rows` orders from `first`: ids ascending, customers spread, three statuses, long unique
/// notes, one timestamp a second.
fn orders(first: i64, rows: i64) -> String {
    let statuses = ["new", "paid", "shipped"];
    let mut csv = String::from("id,customer,status,note,ts,amount\n");
    for id in first..first + rows {
        let seconds = 1_714_557_600 + id;
        let ts = chrono::DateTime::from_timestamp(seconds, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ");
        csv.push_str(&format!(
            "{id},{},{},note {id} {},{ts},{}.{:02}\n",
            (id * 7919) % 100_003,
            statuses[(id % 3) as usize],
            "x".repeat(90),
            id % 1000,
            id % 100
        ));
    }
    csv
}

/// The encodings of `column` in each data file of the table at `dir`, by DuckDB.
fn encodings(scratch: &Scratch, table: &str, column: &str) -> Vec<String> {
    let files = format!("{}/*.parquet", scratch.path(table).display());
    let rows = inlet_tests::duckdb(&format!(
        "SELECT encodings FROM parquet_metadata('{files}') WHERE path_in_schema = '{column}' ORDER BY file_name"
    ));
    rows.into_iter().map(|r| r[0].as_str().unwrap_or_default().to_owned()).collect()
}

#[test]
fn ascending_integers_are_delta_encoded_unique_text_has_no_dictionary_and_every_reader_agrees() {
    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    scratch.write("landing/a.csv", orders(1, 3000));
    scratch.run_ok();
    scratch.write("landing/b.csv", orders(2001, 3000));
    scratch.run_ok();
    assert_eq!(scratch.rows_and_distinct("silver.orders", "id"), (5000, 5000));

    let source_row = encodings(&scratch, "lake/bronze/orders", "_source_row");
    assert_eq!(source_row.len(), 2, "{source_row:?}");
    assert!(source_row.iter().all(|e| e.contains("DELTA_BINARY_PACKED")), "_source_row: {source_row:?}");
    let ids = encodings(&scratch, "lake/bronze/orders", "id");
    assert!(ids.iter().all(|e| e.contains("DELTA_BINARY_PACKED")), "id: {ids:?}");
    // A merge writes rows in no particular order: only the dictionary choices are certain.
    for table in ["lake/bronze/orders", "lake/silver/orders"] {
        let notes = encodings(&scratch, table, "note");
        assert!(!notes.is_empty() && notes.iter().all(|e| !e.contains("DICTIONARY")), "{table} note: {notes:?}");
        let statuses = encodings(&scratch, table, "status");
        assert!(statuses.iter().all(|e| e.contains("DICTIONARY")), "{table} status: {statuses:?}");
    }

    // Every engine reads both tables as inlet does (the service is required under the test command).
    if let Some(address) = readers::service() {
        for (table, dir) in [("bronze.orders", "lake/bronze/orders"), ("silver.orders", "lake/silver/orders")] {
            let checked = scratch.check_table_readers(&address, table, &scratch.path(dir), None);
            let mut agreed = checked.agreed.clone();
            agreed.sort();
            assert_eq!(agreed, ["clickhouse", "duckdb", "spark", "trino"], "{table}: {checked:?}");
        }
    }
}
