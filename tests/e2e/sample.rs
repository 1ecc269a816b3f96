//! The README's sample pipeline: every feature of bronze ingestion in a few files.

use inlet_tests::{Scratch, copy_dir, single_i64, workspace_root};

#[test]
fn sample_pipeline_lands_every_source_and_reruns_idempotently() {
    let scratch = Scratch::new();
    copy_dir(&workspace_root().join("sample-data/shop"), scratch.dir.path());
    let _ = std::fs::remove_dir_all(scratch.path("lake"));

    let run = scratch.run_ok();
    let orders = run.source("orders");
    assert_eq!(orders["files_ingested"], 3);
    assert_eq!(orders["rows"], 9);
    assert_eq!(orders["quarantined"], 2);
    assert_eq!(orders["commits"].as_array().unwrap().len(), 2, "max_files_per_commit = 2 makes two commits");
    assert_eq!(orders["added_columns"], serde_json::json!(["coupon"]), "the third file's column, in the second commit");
    let events = run.source("events");
    assert_eq!((events["rows"].as_i64(), events["quarantined"].as_i64()), (Some(5), Some(2)));
    assert_eq!(run.source("products")["rows"], 3);

    // DuckDB sees exactly what inlet reported, with the hinted and inferred types.
    for (table, rows) in
        [("bronze.orders", 9), ("bronze.events", 5), ("bronze.products", 3), ("bronze.orders__quarantine", 2)]
    {
        assert_eq!(single_i64(&scratch.duckdb(table, "SELECT count(*) FROM {t}")), rows, "{table}");
    }
    let types = scratch.duckdb("bronze.orders", "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {t})");
    let type_of = |name: &str| types.iter().find(|r| r[0] == name).map(|r| r[1].as_str().unwrap().to_owned()).unwrap();
    assert_eq!(type_of("order_id"), "BIGINT");
    assert_eq!(type_of("amount"), "DECIMAL(18,2)");
    assert_eq!(type_of("order_ts"), "TIMESTAMP WITH TIME ZONE");
    assert_eq!(type_of("coupon"), "VARCHAR", "the drifting column was added");
    assert_eq!(type_of("_ingested_at"), "TIMESTAMP WITH TIME ZONE");
    let row = scratch.duckdb(
        "bronze.orders",
        "SELECT amount::VARCHAR, order_ts::VARCHAR, note, _source_file, _source_row FROM {t} WHERE order_id = 7",
    );
    assert_eq!(row[0][0], "3.10");
    assert_eq!(row[0][1], "2024-01-02 08:10:00+00", "offsets are converted to UTC");
    assert_eq!(row[0][2], "crlf file");
    assert_eq!(row[0][3], "orders-2024-01-02.csv");
    assert_eq!(row[0][4], 2);
    let embedded = scratch.duckdb("bronze.orders", "SELECT note FROM {t} WHERE order_id = 6");
    assert_eq!(embedded[0][0], "line one\r\nline two");
    let gz = scratch.duckdb("bronze.orders", "SELECT count(*), count(coupon) FROM {t} WHERE _source_file LIKE '%.gz'");
    assert_eq!((gz[0][0].as_i64(), gz[0][1].as_i64()), (Some(3), Some(2)));
    let rescued = scratch.duckdb("bronze.events", "SELECT _rescued_data FROM {t} WHERE event_id = 6");
    assert_eq!(rescued[0][0], r#"{"device":"desktop"}"#);

    // Silver: one row per order, the cancelled one deleted; gold: revenue per day and currency.
    let silver = scratch.duckdb(
        "silver.orders",
        "SELECT count(*), count(DISTINCT order_id), count(*) FILTER (status = 'cancelled') FROM {t}",
    );
    assert_eq!(silver[0].iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>(), vec![8, 8, 0]);
    let gold = scratch.duckdb(
        "gold.daily_revenue",
        "SELECT day::VARCHAR, currency, revenue::VARCHAR, orders FROM {t} WHERE day = '2024-01-01' ORDER BY currency",
    );
    assert_eq!(
        gold,
        vec![
            vec!["2024-01-01".into(), "EUR".into(), "140.49".into(), serde_json::json!(2)],
            vec!["2024-01-01".into(), "USD".into(), "5.00".into(), serde_json::json!(1)]
        ]
    );
    let tables = run.report()["tables"].clone();
    assert_eq!(tables.as_array().unwrap().len(), 2, "{tables}");
    // The expectations' outcome is in the commit that published silver.orders.
    let silver_log =
        std::fs::read_to_string(scratch.path("lake/silver/orders/_delta_log/00000000000000000000.json")).unwrap();
    let info: serde_json::Value = silver_log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|a| a.get("commitInfo").is_some())
        .unwrap();
    let currency = &info["commitInfo"]["inlet_quality"]["expectations"][1];
    assert_eq!((currency["name"].as_str(), currency["failed"].as_u64()), (Some("currency_known"), Some(1)), "{info}");
    assert_eq!(currency["sample_keys"], serde_json::json!(["order_id=11"]));

    // The tables are plain Delta: reader 1 / writer 2, no timestamp_ntz.
    let log = std::fs::read_to_string(scratch.path("lake/bronze/orders/_delta_log/00000000000000000000.json")).unwrap();
    assert!(log.contains(r#""minReaderVersion":1"#) && log.contains(r#""minWriterVersion":2"#), "{log}");
    assert!(!log.contains("timestamp_ntz"));

    // A second run finds nothing new and makes no new version.
    let again = scratch.run_ok();
    for source in ["orders", "events", "products"] {
        let first = run.source(source);
        let second = again.source(source);
        assert_eq!(second["files_ingested"], 0, "{source}");
        assert_eq!(second["table_version"], first["table_version"], "{source}: no new table version");
        assert_eq!(second["commits"].as_array().unwrap().len(), 0);
    }
    assert_eq!(single_i64(&scratch.duckdb("bronze.orders", "SELECT count(*) FROM {t}")), 9);
    for table in again.report()["tables"].as_array().unwrap() {
        assert_eq!(table["status"], "up_to_date", "{table}");
    }

    // The human summary names every source; `inlet files` lists the ledger.
    let human = scratch.inlet(&["run"]);
    assert_eq!(human.code, Some(0));
    assert!(human.stdout.contains("bronze.orders") && human.stdout.contains("up to date"), "{}", human.stdout);
    let files = scratch.inlet(&["files", "bronze.orders", "--output", "json"]);
    assert_eq!(files.code, Some(0), "{}", files.stderr);
    let entries: serde_json::Value = serde_json::from_str(&files.stdout).unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 3);
    let total: i64 = entries.iter().map(|e| e["rows"].as_i64().unwrap()).sum();
    assert_eq!(total, 9);
    assert!(entries.iter().all(|e| e["load_id"] == run.report()["load_id"]));
    let listing = scratch.inlet(&["files", "bronze.orders"]);
    assert!(
        listing.stdout.contains("orders-2024-01-03.csv.gz") && listing.stdout.contains("3 files"),
        "{}",
        listing.stdout
    );
}
