//! Expectations on a bronze source: each action on the rows of a commit, the outcome recorded
//! in the raw `_delta_log` JSON of that commit, and a failed gate that commits nothing.

use inlet_tests::{Scratch, single_i64};
use serde_json::Value;

const PIPELINE: &str = r#"
[pipeline]
name = "quality"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
schema = { order_id = "bigint", amount = "decimal(10,2)" }

[[sources.orders.expect]]
name = "order_id_present"
check = "not_null"
columns = ["order_id"]
on_violation = "quarantine"

[[sources.orders.expect]]
name = "amount_non_negative"
rule = "amount >= 0"
on_violation = "drop"

[[sources.orders.expect]]
name = "status_known"
check = "accepted_values"
column = "status"
values = ["new", "paid"]
on_violation = "warn"

[[sources.orders.expect]]
name = "order_id_unique"
check = "unique"
columns = ["order_id"]

[tables."silver.orders"]
sql = "SELECT order_id, amount FROM bronze.orders"
"#;

/// The actions of one commit of the raw log, by JSON pointer.
fn commit_info(scratch: &Scratch, table: &str, version: i64) -> Value {
    let path = format!("{}/_delta_log/{version:020}.json", scratch.table(table));
    let log = std::fs::read_to_string(&path).unwrap();
    log.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find_map(|action| action.get("commitInfo").cloned())
        .unwrap_or_else(|| panic!("no commitInfo in {path}"))
}

#[test]
fn source_expectations_shape_the_commit_and_travel_in_its_log() {
    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    scratch.write(
        "landing/1.csv",
        "order_id,amount,status\n1,10.00,new\n,20.00,new\n3,-1.00,paid\n4,40.00,odd\n5,50.00,paid\n",
    );
    let run = scratch.run_ok();
    let source = run.source("orders");
    assert_eq!(source["rows"], 3, "{source}");
    assert_eq!(source["quarantined"], 1);

    // Warned and quarantined rows are where they belong; the dropped one is nowhere.
    let rows = scratch.duckdb("bronze.orders", "SELECT order_id, status FROM {t} ORDER BY order_id");
    assert_eq!(serde_json::to_string(&rows).unwrap(), r#"[[1,"new"],[4,"odd"],[5,"paid"]]"#);
    let quarantined = scratch.duckdb(
        "bronze.orders__quarantine",
        "SELECT _source_file, _source_row, _error_code, _error_rule, _raw_record FROM {t}",
    );
    assert_eq!(
        serde_json::to_string(&quarantined).unwrap(),
        r#"[["1.csv",2,"expectation","order_id_present","{\"amount\":20.00,\"status\":\"new\"}"]]"#
    );

    // The commit that published the rows carries every expectation's outcome.
    let info = commit_info(&scratch, "bronze.orders", 0);
    let quality = &info["inlet_quality"];
    assert_eq!(quality["outcome"], "warned", "{info}");
    let by_name =
        |name: &str| quality["expectations"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap().clone();
    let dropped = by_name("amount_non_negative");
    assert_eq!((dropped["rows_checked"].as_u64(), dropped["failed"].as_u64()), (Some(5), Some(1)));
    assert_eq!(dropped["dropped"], 1);
    assert_eq!(dropped["action"], "drop");
    assert_eq!(dropped["rule"], "amount >= 0");
    assert_eq!(dropped["sample_keys"][0], "_source_file=1.csv, _source_row=3");
    assert_eq!(by_name("order_id_present")["quarantined"], 1);
    assert_eq!(by_name("status_known")["outcome"], "warned");
    assert_eq!(by_name("order_id_unique")["outcome"], "passed");
    let summary = info["userMetadata"].as_str().unwrap();
    assert!(summary.contains("quality warned 1/4"), "{summary}");

    // A duplicate key fails the gate: nothing is committed, the file stays un-ingested and the
    // table that reads bronze is skipped.
    scratch.write("landing/2.csv", "order_id,amount,status\n7,1.00,new\n7,2.00,new\n8,3.00,new\n");
    let run = scratch.inlet(&["run", "--output", "json"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let source = run.source("orders");
    let error = source["error"]["message"].as_str().unwrap();
    assert!(error.contains("order_id_unique 1 of 3 failed") && error.contains("_source_row=2"), "{error}");
    assert_eq!(source["table_version"], 0);
    let silver = run.report()["tables"][0].clone();
    assert_eq!(silver["status"], "skipped", "{silver}");
    assert_eq!(single_i64(&scratch.duckdb("bronze.orders", "SELECT COUNT(*) FROM {t}")), 3);

    // Fixed at the source: the next run takes the file.
    scratch.write("landing/2.csv", "order_id,amount,status\n7,1.00,new\n8,3.00,new\n");
    let run = scratch.run_ok();
    assert_eq!(run.source("orders")["files_ingested"], 1);
    assert_eq!(single_i64(&scratch.duckdb("silver.orders", "SELECT COUNT(*) FROM {t}")), 5);
    let info = commit_info(&scratch, "bronze.orders", 1);
    assert_eq!(info["inlet_quality"]["outcome"], "passed", "{info}");
}
