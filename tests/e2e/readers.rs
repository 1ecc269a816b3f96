//! Spark and Trino as their users query inlet's tables: time travel by version and by time,
//! SQL over a path, the history with inlet's operations and `userMetadata`, the change data
//! feed; and the checkpoint delta-rs writes at commit 100, under the rules Trino's connector
//! relies on. (Every e2e test's tables are also read whole by every engine when it ends:
//! `tests/readers.rs`.)

use inlet_tests::{Scratch, readers};
use serde_json::Value;

const PIPELINE: &str = r#"
[pipeline]
name = "readers"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
schema = { order_id = "bigint", amount = "decimal(10,2)" }

[tables."silver.orders"]
sql = "SELECT order_id, status, amount FROM bronze.orders"
write = "merge"
keys = ["order_id"]
incremental = true
change_data_feed = true
"#;

fn texts(rows: Vec<Vec<Value>>) -> Vec<Vec<String>> {
    rows.into_iter()
        .map(|row| row.into_iter().map(|v| v.as_str().map_or_else(|| "<NULL>".to_owned(), str::to_owned)).collect())
        .collect()
}

#[test]
fn spark_and_trino_read_versions_history_and_the_change_feed() {
    let Some(address) = readers::service() else { return };
    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    scratch.write("landing/1.csv", "order_id,status,amount\n1,new,10.00\n2,new,20.00\n3,new,30.00\n");
    scratch.run_ok();
    scratch.write("landing/2.csv", "order_id,status,amount\n2,paid,20.00\n4,new,40.00\n");
    scratch.run_ok();
    let silver = scratch.path("lake/silver/orders");
    let bronze = scratch.path("lake/bronze/orders");

    // Every engine at each version, against `inlet query --as-of`.
    for version in [0, 1] {
        let checked = scratch.check_table_readers(&address, "silver.orders", &silver, Some(version));
        for engine in ["spark", "trino"] {
            assert!(checked.agreed.iter().any(|e| e == engine), "{engine} at version {version}: {checked:?}");
        }
    }

    // SQL over the path, and time travel by time: halfway between the two commits (Spark
    // times a commit by its log file, a moment after the time inlet records in it).
    let history = scratch.inlet(&["history", "silver.orders", "--output", "json"]);
    let history: Value = serde_json::from_str(&history.stdout).unwrap();
    let versions = history.as_array().unwrap();
    let time_of =
        |version: i64| versions.iter().find(|v| v["version"] == version).unwrap()["timestamp_ms"].as_i64().unwrap();
    let between = time_of(0) + (time_of(1) - time_of(0)) / 2;
    let at = chrono::DateTime::from_timestamp_millis(between).unwrap().format("%Y-%m-%d %H:%M:%S%.3f");
    let path = silver.display();
    let counts = texts(readers::sql(
        &address,
        "spark",
        &format!(
            "SELECT (SELECT count(*) FROM delta.`{path}`), (SELECT count(*) FROM delta.`{path}` TIMESTAMP AS OF '{at}'), (SELECT count(*) FROM delta.`{path}` VERSION AS OF 0)"
        ),
        &[],
    ));
    assert_eq!(counts, [["4", "3", "3"]]);

    // DESCRIBE HISTORY shows inlet's operation and userMetadata for every version.
    for table in [&silver, &bronze] {
        let (columns, rows) =
            readers::sql_with_columns(&address, "spark", &format!("DESCRIBE HISTORY delta.`{}`", table.display()), &[]);
        let at = |name: &str| columns.iter().position(|c| c == name).unwrap();
        let mut spark: Vec<Vec<String>> = texts(rows)
            .into_iter()
            .map(|r| vec![r[at("version")].clone(), r[at("operation")].clone(), r[at("userMetadata")].clone()])
            .collect();
        spark.sort_by_key(|r| r[0].parse::<i64>().unwrap());
        let name = if table == &silver { "silver.orders" } else { "bronze.orders" };
        let ours = scratch.inlet(&["history", name, "--output", "json"]);
        let ours: Value = serde_json::from_str(&ours.stdout).unwrap();
        let mut ours: Vec<Vec<String>> = ours
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                vec![
                    v["version"].to_string(),
                    v["operation"].as_str().unwrap().to_owned(),
                    v["user_metadata"].as_str().unwrap().to_owned(),
                ]
            })
            .collect();
        ours.sort_by_key(|r| r[0].parse::<i64>().unwrap());
        assert_eq!(spark, ours, "DESCRIBE HISTORY of {name}");
        assert!(spark.iter().all(|r| r[2].starts_with("inlet ")), "{spark:?}");
    }

    // The change data feed, as Spark's `table_changes` and Trino's give it.
    let expected = [
        ["1", "new", "insert", "0"],
        ["2", "new", "insert", "0"],
        ["3", "new", "insert", "0"],
        ["2", "new", "update_preimage", "1"],
        ["2", "paid", "update_postimage", "1"],
        ["4", "new", "insert", "1"],
    ];
    let spark = texts(readers::sql(
        &address,
        "spark",
        &format!(
            "SELECT order_id, status, _change_type, _commit_version FROM table_changes_by_path('{path}', 0) ORDER BY _commit_version, order_id, _change_type DESC"
        ),
        &[],
    ));
    assert_eq!(spark, expected.map(|r| r.map(str::to_owned)));
    let trino = texts(readers::sql(
        &address,
        "trino",
        "SELECT order_id, status, _change_type, _commit_version FROM TABLE(delta.system.table_changes(schema_name => 'inlet', table_name => '{t}', since_version => 0)) ORDER BY 4, 1, 3 DESC",
        &[("t", silver.as_path())],
    ));
    // Trino's `since_version` is exclusive and cannot be below 0: the changes after version 0.
    let after_first: Vec<Vec<String>> =
        expected.iter().filter(|r| r[3] != "0").map(|r| r.map(str::to_owned).to_vec()).collect();
    assert_eq!(trino, after_first);
}

#[test]
fn a_checkpoint_at_commit_100_keeps_to_trinos_rules_and_every_engine_reads_past_it() {
    let Some(address) = readers::service() else { return };
    let scratch = Scratch::new();
    scratch.pipeline(
        &PIPELINE.replace("target = \"bronze.orders\"", "target = \"bronze.orders\"\nmax_files_per_commit = 1"),
    );
    for i in 1..=104 {
        scratch.write(&format!("landing/{i:03}.csv"), format!("order_id,status,amount\n{i},new,{i}.50\n"));
    }
    let run = scratch.run_ok();
    assert_eq!(run.source("orders")["commits"].as_array().map(Vec::len), Some(104));
    let bronze = scratch.path("lake/bronze/orders");
    let log = bronze.join("_delta_log");
    // delta-rs checkpoints every 100 commits: the 100th is version 99, in one part.
    let last: Value = serde_json::from_str(&std::fs::read_to_string(log.join("_last_checkpoint")).unwrap()).unwrap();
    assert_eq!(last["version"], 99, "{last}");
    // trinodb/trino#26148: a single-part checkpoint's `_last_checkpoint` has no `parts`.
    assert!(last.get("parts").is_none_or(Value::is_null), "`parts` in {last}");
    let checkpoint = log.join("00000000000000000099.checkpoint.parquet");
    assert!(checkpoint.exists(), "no single-part checkpoint at version 99");
    // trinodb/trino#18760: page indexes, where written, agree with the pages they index.
    inlet_tests::check_page_indexes(&checkpoint);
    // Partition values and stats as Trino parses them: every engine reads past the checkpoint
    // (Trino reads the checkpoint, then commits 101 to 104).
    let checked = scratch.check_table_readers(&address, "bronze.orders", &bronze, None);
    for engine in ["duckdb", "spark", "trino", "clickhouse"] {
        assert!(checked.agreed.iter().any(|e| e == engine), "{engine}: {checked:?}");
    }
    let counts = texts(readers::sql(
        &address,
        "trino",
        "SELECT count(*), count(DISTINCT order_id), sum(amount) FROM delta.inlet.{t} WHERE order_id > 50",
        &[("t", bronze.as_path())],
    ));
    assert_eq!(counts, [["54", "54", "4212"]]);
}
