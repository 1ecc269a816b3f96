//! Bad records go to `<target>__quarantine` with a bounded error code, never the run.

use inlet_tests::{Scratch, single_i64};
use serde_json::json;

#[test]
fn bad_csv_and_ndjson_records_are_quarantined_with_their_raw_text() {
    let scratch = Scratch::new();
    scratch.pipeline(
        r#"
[pipeline]
name = "bad"

[sources.orders]
type = "files"
path = "orders"
format = "csv"
target = "bronze.orders"
schema = { id = "bigint", amount = "decimal(10,2)", at = "timestamp" }

[sources.events]
type = "files"
path = "events"
format = "ndjson"
target = "bronze.events"
schema = { n = "int" }
"#,
    );
    let mut csv =
        b"id,amount,at\n1,1.50,2024-01-01T00:00:00Z\n2,x1,2024-01-01T00:00:00Z\n3,2.00\n4,3.00,yesterday\n".to_vec();
    csv.extend_from_slice(b"5,4.00,2024-01-01T00:00:00Z,extra\n6,5.00,2024-01-0\xff\n7,6.00,\n");
    scratch.write("orders/a.csv", csv);
    scratch
        .write("events/a.ndjson", "{\"n\": 1}\n{\"n\": \n\n\"text\"\n{\"n\": \"seven\"}\n{\"n\": 2, \"s\": \"ok\"}\n");

    let run = scratch.run_ok();
    assert_eq!(run.source("orders")["rows"], 2);
    assert_eq!(run.source("orders")["quarantined"], 5);
    let rows = scratch.duckdb(
        "bronze.orders__quarantine",
        "SELECT _source_file, _source_row, _error_code, _error_message, _raw_record FROM {t} ORDER BY _source_row",
    );
    let codes: Vec<(i64, &str)> = rows.iter().map(|r| (r[1].as_i64().unwrap(), r[2].as_str().unwrap())).collect();
    assert_eq!(
        codes,
        vec![(2, "type_parse"), (3, "field_count"), (4, "type_parse"), (5, "field_count"), (6, "encoding")]
    );
    assert_eq!(rows[0][0], "a.csv");
    assert!(
        rows[0][3].as_str().unwrap().contains("`amount`") && rows[0][3].as_str().unwrap().contains("x1"),
        "{rows:?}"
    );
    assert_eq!(rows[0][4], "2,x1,2024-01-01T00:00:00Z");
    assert_eq!(rows[1][3], "expected 3 fields, found 2");
    assert!(
        rows[4][3].as_str().unwrap().contains("`at`") && rows[4][3].as_str().unwrap().contains("UTF-8"),
        "{rows:?}"
    );
    let good = scratch.duckdb("bronze.orders", "SELECT id, amount::VARCHAR, \"at\" FROM {t} ORDER BY id");
    assert_eq!(good.iter().map(|r| r[0].clone()).collect::<Vec<_>>(), vec![json!(1), json!(7)]);
    assert_eq!(good[1][2], serde_json::Value::Null, "an empty field is null, not an error");

    let events = scratch.duckdb(
        "bronze.events__quarantine",
        "SELECT _source_row, _error_code, _raw_record FROM {t} ORDER BY _source_row",
    );
    assert_eq!(
        events,
        vec![
            vec![json!(2), json!("json_syntax"), json!("{\"n\":")],
            vec![json!(4), json!("json_shape"), json!("\"text\"")],
            vec![json!(5), json!("type_parse"), json!("{\"n\":\"seven\"}")],
        ]
    );
    assert_eq!(single_i64(&scratch.duckdb("bronze.events", "SELECT sum(n) FROM {t}")), 3);
    let meta = scratch
        .duckdb("bronze.orders__quarantine", "SELECT count(DISTINCT _load_id), min(_ingested_at) IS NOT NULL FROM {t}");
    assert_eq!(meta[0], vec![json!(1), json!(true)]);
}
