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
    let status = scratch.inlet(&["status", "--output", "json"]);
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    let rows: Value = serde_json::from_str(&status.stdout).unwrap();
    let orders = rows.as_array().unwrap().iter().find(|r| r["name"] == "orders").unwrap().clone();
    assert_eq!((orders["backlog_files"].as_u64(), orders["table_version"].as_i64()), (Some(1), Some(0)), "{orders}");
    assert!(orders["last_error"].as_str().unwrap().contains("order_id_unique"), "{orders}");
    assert!(orders["last_failure_micros"].as_i64() > orders["last_success_micros"].as_i64());
    assert!(orders["freshness_secs"].as_i64().is_some());

    // Fixed at the source: the next run takes the file.
    scratch.write("landing/2.csv", "order_id,amount,status\n7,1.00,new\n8,3.00,new\n");
    let run = scratch.run_ok();
    assert_eq!(run.source("orders")["files_ingested"], 1);
    assert_eq!(single_i64(&scratch.duckdb("silver.orders", "SELECT COUNT(*) FROM {t}")), 5);
    let info = commit_info(&scratch, "bronze.orders", 1);
    assert_eq!(info["inlet_quality"]["outcome"], "passed", "{info}");
}

#[test]
fn history_audit_query_as_of_restore_and_the_run_history() {
    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    // v0: three rows (one quarantined), then v1..v3: one file each.
    scratch.write("landing/0.csv", "order_id,amount,status\n1,1.00,new\n,2.00,new\n2,3.00,new\n");
    scratch.run_ok();
    for i in 1..=3 {
        scratch.write(&format!("landing/{i}.csv"), format!("order_id,amount,status\n{},1.00,new\n", 10 + i));
        scratch.run_ok();
    }
    // A failed gate (a duplicate key): nothing committed, but on record in the run history.
    scratch.write("landing/4.csv", "order_id,amount,status\n20,1.00,new\n20,1.00,new\n");
    assert_eq!(scratch.inlet(&["run"]).code, Some(1));
    std::fs::remove_file(scratch.path("landing/4.csv")).unwrap();

    let history = scratch.inlet(&["history", "bronze.orders", "--output", "json"]);
    assert_eq!(history.code, Some(0), "{}", history.stderr);
    let versions: Value = serde_json::from_str(&history.stdout).unwrap();
    let versions = versions.as_array().unwrap();
    assert_eq!(versions.iter().map(|v| v["version"].as_i64().unwrap()).collect::<Vec<_>>(), [3, 2, 1, 0]);
    assert_eq!(versions[3]["files"], serde_json::json!(["0.csv"]));
    assert_eq!(versions[3]["quality"]["outcome"], "warned");
    assert_eq!(versions[3]["rows"]["quarantined"], 1);
    let human = scratch.inlet(&["history", "bronze.orders", "--files"]).stdout;
    assert!(human.contains("quality warned 3/4") && human.contains("  0.csv"), "{human}");

    let runs = scratch.duckdb(
        "_inlet.runs",
        "SELECT kind, name, status, quarantined, error IS NOT NULL, quality IS NOT NULL FROM {t} WHERE status = 'failed' ORDER BY ALL",
    );
    assert_eq!(serde_json::to_string(&runs).unwrap(), r#"[["source","orders","failed",0,true,true]]"#);
    let skipped =
        scratch.duckdb("_inlet.runs", "SELECT COUNT(*) FROM {t} WHERE name = 'silver.orders' AND status = 'skipped'");
    assert_eq!(single_i64(&skipped), 1, "the run history has a row for the table the failure skipped");

    // Time travel, then restore to v1 and read it back.
    let as_of =
        scratch.inlet(&["query", "SELECT COUNT(*) AS n FROM bronze.orders", "--as-of", "1", "--output", "json"]);
    assert_eq!(as_of.code, Some(0), "{}", as_of.stderr);
    assert_eq!(as_of.stdout.trim(), r#"[{"n":3}]"#);
    let csv = scratch.path("out.csv");
    let out = scratch.inlet(&[
        "query",
        "SELECT order_id FROM bronze.orders ORDER BY 1",
        "--output",
        "csv",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), "order_id\n1\n2\n11\n12\n13\n");
    let parquet = scratch.path("out.parquet");
    let out = scratch.inlet(&[
        "query",
        "SELECT order_id FROM bronze.orders",
        "--output",
        "parquet",
        parquet.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let sum = inlet_tests::duckdb(&format!("SELECT SUM(order_id) FROM read_parquet('{}')", parquet.display()));
    assert_eq!(single_i64(&sum), 1 + 2 + 11 + 12 + 13);

    let restore = scratch.inlet(&["restore", "bronze.orders", "--version", "1", "--reason", "bad load"]);
    assert_eq!(restore.code, Some(0), "{}", restore.stderr);
    assert_eq!(single_i64(&scratch.duckdb("bronze.orders", "SELECT COUNT(*) FROM {t}")), 3);
    let info = commit_info(&scratch, "bronze.orders", 4);
    assert_eq!(info["operation"], "RESTORE");
    assert_eq!(info["inlet_restore"]["reason"], "bad load", "{info}");
    assert!(info["userMetadata"].as_str().unwrap().contains("bad load"));
    let runs = scratch.duckdb("_inlet.runs", "SELECT kind, table_version FROM {t} WHERE kind = 'restore'");
    assert_eq!(serde_json::to_string(&runs).unwrap(), r#"[["restore",4]]"#);
    // Every engine reads the restored table (its files are deleted further down).
    if let Some(address) = inlet_tests::readers::service() {
        let path = std::path::PathBuf::from(scratch.table("bronze.orders"));
        scratch.check_table_readers(&address, "bronze.orders", &path, None);
    }
    // Restored, the old versions still read as they were.
    let before =
        scratch.inlet(&["query", "SELECT COUNT(*) AS n FROM bronze.orders", "--as-of", "3", "--output", "json"]);
    assert_eq!(before.stdout.trim(), r#"[{"n":5}]"#, "{}", before.stderr);

    let quarantine = scratch.inlet(&["quarantine", "bronze.orders", "--output", "json"]);
    assert_eq!(quarantine.code, Some(0), "{}", quarantine.stderr);
    let groups: Value = serde_json::from_str(&quarantine.stdout).unwrap();
    assert_eq!(groups[0]["reason"], "order_id_present", "{groups}");
    assert_eq!(groups[0]["rows"], 1);

    // Restoring a version whose files were vacuumed is refused, naming the file.
    scratch.skip_readers("bronze.orders", "every data file is deleted to show a restore refusing");
    for entry in std::fs::read_dir(scratch.table("bronze.orders")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "parquet") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let refused = scratch.inlet(&["restore", "bronze.orders", "--version", "3"]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(refused.stderr.contains("VACUUM") && refused.stderr.contains(".parquet"), "{}", refused.stderr);

    // The log before a checkpoint is cleaned up: audit reads the run history instead.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let url = url::Url::from_directory_path(scratch.table("bronze.orders")).unwrap();
        let table = deltalake::open_table(url).await.unwrap();
        deltalake::checkpoints::create_checkpoint(&table, None).await.unwrap();
    });
    for v in 0..4 {
        std::fs::remove_file(format!("{}/_delta_log/{v:020}.json", scratch.table("bronze.orders"))).unwrap();
    }
    let audit = scratch.inlet(&["audit", "bronze.orders", "--version", "0", "--output", "json"]);
    assert_eq!(audit.code, Some(0), "{}", audit.stderr);
    let record: Value = serde_json::from_str(&audit.stdout).unwrap();
    assert_eq!(record["from"], "run history");
    assert_eq!(record["files"], serde_json::json!(["0.csv"]));
    assert_eq!(record["quality"]["expectations"][0]["quarantined"], 1, "{record}");
    let human = scratch.inlet(&["audit", "bronze.orders", "--version", "0"]).stdout;
    assert!(human.contains("order_id_present") && human.contains("rule: not_null(order_id)"), "{human}");
}

const REPLAY_PIPELINE: &str = r#"
[pipeline]
name = "replay"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
schema = { order_id = "bigint", amount = "decimal(10,2)" }

[[sources.orders.expect]]
name = "status_known"
check = "accepted_values"
column = "status"
values = ["new", "paid"]
on_violation = "quarantine"

[tables."silver.orders"]
sql = "SELECT order_id, status, amount FROM bronze.orders"
write = "merge"
keys = ["order_id"]
incremental = true

[[tables."silver.orders".expect]]
name = "amount_non_negative"
rule = "amount >= 0"
on_violation = "quarantine"
"#;

#[test]
fn replay_lands_fixed_rows_once_and_finishes_an_interrupted_replay() {
    let scratch = Scratch::new();
    scratch.pipeline(REPLAY_PIPELINE);
    scratch.write(
        "landing/1.csv",
        "order_id,status,amount\n1,new,10.00\n2,new,-5.00\n3,shipped,30.00\n4,paid,-1.00\n5,new,-7.00\n",
    );
    let run = scratch.run_ok();
    assert_eq!(run.source("orders")["quarantined"], 1);
    let silver = run.report()["tables"][0].clone();
    assert_eq!(silver["quarantined"], 3, "{silver}");

    // A run killed between silver's commit and its quarantine's: the next run publishes the
    // staged quarantine rows its commit names, once, even after another commit to the table.
    let quarantine_log = format!("{}/_delta_log", scratch.table("silver.orders__quarantine"));
    std::fs::remove_dir_all(&quarantine_log).unwrap();
    scratch.pipeline(&REPLAY_PIPELINE.replace("incremental = true", "incremental = true\nchange_data_feed = true"));
    scratch.run_ok();
    scratch.pipeline(REPLAY_PIPELINE);
    let count = |table: &str| single_i64(&scratch.duckdb(table, "SELECT COUNT(*) FROM {t}"));
    assert_eq!(count("silver.orders__quarantine"), 3);
    scratch.run_ok();
    assert_eq!(count("silver.orders__quarantine"), 3, "published once");

    // Nothing fixed yet: the rows fail again and stay.
    let again = scratch.inlet(&["replay", "silver.orders", "--output", "json"]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    let report: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!((report["candidates"].as_u64(), report["landed"].as_u64()), (Some(3), Some(0)), "{report}");

    // The rule is fixed for small refunds: two rows pass, one (-7.00) still fails.
    scratch.pipeline(&REPLAY_PIPELINE.replace("amount >= 0", "amount >= -5"));
    let fixed = scratch.inlet(&["replay", "silver.orders", "--rule", "amount_non_negative", "--output", "json"]);
    assert_eq!(fixed.code, Some(0), "{}", fixed.stderr);
    let report: Value = serde_json::from_str(&fixed.stdout).unwrap();
    assert_eq!((report["landed"].as_u64(), report["still_quarantined"].as_u64()), (Some(2), Some(1)), "{report}");
    let rows = scratch.duckdb("silver.orders", "SELECT order_id, amount::VARCHAR FROM {t} ORDER BY 1");
    assert_eq!(serde_json::to_string(&rows).unwrap(), r#"[[1,"10.00"],[2,"-5.00"],[4,"-1.00"]]"#);
    let marked = scratch.duckdb(
        "silver.orders__quarantine",
        "SELECT _raw_record LIKE '%\"order_id\":5%', _replayed_version FROM {t} ORDER BY 1, 2",
    );
    let version = report["table_version"].as_i64().unwrap();
    assert_eq!(
        marked,
        vec![vec![false.into(), version.into()], vec![false.into(), version.into()], vec![true.into(), Value::Null]]
    );
    let listing = scratch.inlet(&["quarantine", "silver.orders", "--output", "json"]);
    let groups: Value = serde_json::from_str(&listing.stdout).unwrap();
    assert_eq!(groups[0]["rows"], 1, "replayed rows left the quarantine: {groups}");

    // Twice is once.
    let runs = scratch.duckdb("_inlet.runs", "SELECT kind, table_version FROM {t} WHERE kind = 'replay'");
    assert_eq!(runs, vec![vec![Value::from("replay"), version.into()]], "a replay is in the run history");
    let twice = scratch.inlet(&["replay", "silver.orders", "--output", "json"]);
    let report: Value = serde_json::from_str(&twice.stdout).unwrap();
    assert_eq!((report["candidates"].as_u64(), report["landed"].as_u64()), (Some(1), Some(0)), "{report}");

    // A bronze row quarantined by the source's expectation lands in bronze, with its file and row.
    scratch.pipeline(&REPLAY_PIPELINE.replace(r#"["new", "paid"]"#, r#"["new", "paid", "shipped"]"#));
    let log_dir = format!("{}/_delta_log", scratch.table("bronze.orders__quarantine"));
    let replayed = scratch.inlet(&["replay", "bronze.orders", "--output", "json"]);
    let report: Value = serde_json::from_str(&replayed.stdout).unwrap();
    assert_eq!(report["landed"], 1, "{report}");
    let row = scratch.duckdb("bronze.orders", "SELECT status, _source_file, _source_row FROM {t} WHERE order_id = 3");
    assert_eq!(serde_json::to_string(&row).unwrap(), r#"[["shipped","1.csv",3]]"#);

    // A replay killed after the table's commit, before the quarantine's: the next one marks
    // the rows it landed and lands nothing twice.
    let last = std::fs::read_dir(&log_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .max()
        .unwrap();
    std::fs::remove_file(&last).unwrap();
    let finished = scratch.inlet(&["replay", "bronze.orders", "--output", "json"]);
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    let report: Value = serde_json::from_str(&finished.stdout).unwrap();
    assert_eq!((report["candidates"].as_u64(), report["landed"].as_u64()), (Some(0), Some(0)), "{report}");
    assert_eq!(single_i64(&scratch.duckdb("bronze.orders", "SELECT COUNT(*) FROM {t} WHERE order_id = 3")), 1);
}

#[test]
fn a_failed_gate_on_a_silver_table_keeps_its_version_and_skips_gold() {
    let scratch = Scratch::new();
    let pipeline = r#"
[pipeline]
name = "gate"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
schema = { order_id = "bigint", amount = "decimal(10,2)" }

[tables."silver.orders"]
sql = "SELECT order_id, amount FROM bronze.orders"
write = "append"
incremental = true

[[tables."silver.orders".expect]]
name = "amount_non_negative"
rule = "amount >= 0"
max_violation_ratio = 0.4

[tables."gold.total"]
sql = "SELECT SUM(amount) AS total FROM silver.orders"
"#;
    scratch.pipeline(pipeline);
    scratch.write("landing/1.csv", "order_id,amount\n1,10.00\n2,-1.00\n3,5.00\n");
    // One bad row of three is within the ratio: a warning, and the rows land.
    let run = scratch.run_ok();
    let silver =
        run.report()["tables"].as_array().unwrap().iter().find(|t| t["table"] == "silver.orders").unwrap().clone();
    assert_eq!(silver["quality"]["outcome"], "warned", "{silver}");
    scratch.write("landing/2.csv", "order_id,amount\n4,-2.00\n5,-3.00\n6,1.00\n");
    let failed = scratch.inlet(&["run", "--output", "json"]);
    assert_eq!(failed.code, Some(1), "{}", failed.stdout);
    let tables = failed.report()["tables"].clone();
    let by = |name: &str| tables.as_array().unwrap().iter().find(|t| t["table"] == name).unwrap().clone();
    let silver = by("silver.orders");
    assert_eq!(silver["status"], "failed");
    let message = silver["error"]["message"].as_str().unwrap();
    assert!(message.contains("amount_non_negative 2 of 3 failed") && message.contains("66.67%"), "{message}");
    assert_eq!(by("gold.total")["status"], "skipped");
    assert_eq!(single_i64(&scratch.duckdb("silver.orders", "SELECT COUNT(*) FROM {t}")), 3, "version 0 untouched");
    let log = std::path::Path::new(&scratch.table("silver.orders")).join("_delta_log/00000000000000000001.json");
    assert!(!log.exists(), "no commit was made");
    let runs = scratch.duckdb("_inlet.runs", "SELECT status, quality LIKE '%\"outcome\":\"failed\"%' FROM {t} WHERE name = 'silver.orders' ORDER BY started_at");
    assert_eq!(serde_json::to_string(&runs).unwrap(), r#"[["committed",null],["failed",true]]"#);
}

#[test]
fn replay_parses_records_again_after_the_csv_options_are_fixed() {
    let scratch = Scratch::new();
    let pipeline = r#"
[pipeline]
name = "reparse"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
schema = { order_id = "bigint", amount = "decimal(10,2)" }
"#;
    scratch.pipeline(pipeline);
    scratch.write("landing/1.csv", "order_id,amount,note\n1,1.00,a\n2,\"2,50\",b\n3,n/a,\"c, d\"\n4,x,e\n");
    let run = scratch.run_ok();
    assert_eq!(run.source("orders")["quarantined"], 3);
    // `n/a` is declared a NULL: row 3 parses now; rows 2 and 4 still do not.
    scratch.pipeline(&format!("{pipeline}\n[sources.orders.csv]\nnull_values = [\"\", \"n/a\"]\n"));
    let replay = scratch.inlet(&["replay", "bronze.orders", "--output", "json"]);
    assert_eq!(replay.code, Some(0), "{}", replay.stderr);
    let report: Value = serde_json::from_str(&replay.stdout).unwrap();
    assert_eq!((report["landed"].as_u64(), report["still_quarantined"].as_u64()), (Some(1), Some(2)), "{report}");
    let row = scratch.duckdb(
        "bronze.orders",
        "SELECT order_id, amount, note, _source_file, _source_row FROM {t} WHERE order_id = 3",
    );
    assert_eq!(serde_json::to_string(&row).unwrap(), r#"[[3,null,"c, d","1.csv",3]]"#);
    let again = scratch.inlet(&["replay", "bronze.orders", "--output", "json"]);
    let report: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!((report["candidates"].as_u64(), report["landed"].as_u64()), (Some(2), Some(0)), "{report}");
}
