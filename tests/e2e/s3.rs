//! The lake on S3 (the moto server `scripts/test.sh` starts): bronze and derived tables land
//! exactly once with conditional-PUT commits, DuckDB reads them through its own S3 client,
//! and writers racing each other (four processes appending to one table, two running the
//! same source) lose no commit and double no file.

use std::process::{Command, Stdio};

use inlet_tests::{Scratch, inlet_bin, s3, single_i64};

fn orders(first: u64, n: u64) -> String {
    let mut csv = String::from("order_id,amount\n");
    for id in first..first + n {
        csv.push_str(&format!("{id},{}.50\n", id % 7));
    }
    csv
}

/// A pipeline whose lake is `lake`, its source `source` landing order CSV files from
/// `landing/` in `target`; `extra` follows the source's keys (more of its keys, then more
/// tables).
fn orders_pipeline(name: &str, lake: &str, source: &str, target: &str, extra: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"
lake = "{lake}"

[sources.{source}]
type = "files"
path = "landing"
format = "csv"
target = "{target}"
schema = {{ order_id = "bigint", amount = "decimal(10,2)" }}
{extra}"#
    )
}

/// `inlet run --output json` in `dir`, started, not waited for.
fn spawn_run(dir: &std::path::Path) -> std::process::Child {
    Command::new(inlet_bin())
        .args(["run", "inlet.toml", "--output", "json"])
        .current_dir(dir)
        .env("INLET_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_lake_on_s3_lands_exactly_once_and_reads_back() {
    let Some(s3) = s3("a_lake_on_s3_lands_exactly_once_and_reads_back") else { return };
    let bucket = s3.bucket("lake");
    let scratch = Scratch::new();
    scratch.pipeline(&orders_pipeline(
        "s3-lake",
        &format!("s3://{bucket}/warehouse"),
        "orders",
        "bronze.orders",
        r#"max_files_per_commit = 2

[tables."silver.orders"]
sql = "SELECT order_id, amount FROM bronze.orders"
write = "merge"
keys = ["order_id"]
incremental = true
"#,
    ));
    for i in 0..5 {
        scratch.write(&format!("landing/part-{i}.csv"), orders(i * 100, 100));
    }
    scratch.write("landing/bad.csv", "order_id,amount\n1,not-a-number\n");
    let run = scratch.run_ok();
    let source = run.source("orders");
    assert_eq!(source["rows"], 500, "{source}");
    assert_eq!(source["quarantined"], 1, "{source}");
    assert_eq!(source["commits"].as_array().unwrap().len(), 3);
    // Again: nothing new, no new version.
    let again = scratch.run_ok();
    assert_eq!(again.source("orders")["commits"].as_array().unwrap().len(), 0);

    let bronze = format!("s3://{bucket}/warehouse/bronze/orders");
    let silver = format!("s3://{bucket}/warehouse/silver/orders");
    let rows = inlet_tests::duckdb_batch(&[
        format!("SELECT COUNT(*), COUNT(DISTINCT order_id) FROM delta_scan('{bronze}')"),
        format!("SELECT COUNT(*) FROM delta_scan('{silver}')"),
        format!("SELECT COUNT(*) FROM delta_scan('{bronze}__quarantine')"),
    ]);
    assert_eq!((rows[0][0][0].as_i64(), rows[0][0][1].as_i64()), (Some(500), Some(500)));
    assert_eq!(single_i64(&rows[1]), 500);
    assert_eq!(single_i64(&rows[2]), 1);
    // The log is on S3, one JSON commit per version, beside the run history.
    let log = s3.keys(&bucket, "warehouse/bronze/orders/_delta_log/");
    assert_eq!(log.iter().filter(|k| k.ends_with(".json")).count(), 3, "{log:?}");
    assert!(!s3.keys(&bucket, "warehouse/_inlet/runs/_delta_log/").is_empty());
    // The operator commands work on it too.
    let status = scratch.inlet(&["status"]);
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(status.stdout.contains("silver.orders"), "{}", status.stdout);
    let history = scratch.inlet(&["history", "bronze.orders"]);
    assert_eq!(history.code, Some(0), "{history:?}");
    // Maintenance on S3: the small files compacted, the old ones vacuumed, the rows kept.
    let optimized = scratch.inlet(&["optimize", "bronze.orders", "--output", "json"]);
    assert_eq!(optimized.code, Some(0), "{}", optimized.stderr);
    let report: serde_json::Value = serde_json::from_str(&optimized.stdout).unwrap();
    assert_eq!((report["files_removed"].as_u64(), report["files_added"].as_u64()), (Some(3), Some(1)), "{report}");
    let vacuumed = scratch.inlet(&["vacuum", "bronze.orders", "--retain-hours", "0", "--force", "--output", "json"]);
    assert_eq!(vacuumed.code, Some(0), "{}", vacuumed.stderr);
    let data = s3.keys(&bucket, "warehouse/bronze/orders/");
    assert_eq!(data.iter().filter(|k| k.ends_with(".parquet") && !k.contains("_delta_log")).count(), 1, "{data:?}");
    // DuckDB, Spark, Trino and ClickHouse read the tables on S3 as inlet does.
    let tables = ["bronze.orders", "silver.orders", "bronze.orders__quarantine"];
    for (table, checked) in tables.iter().zip(scratch.check_s3_readers(&format!("s3://{bucket}/warehouse"), &tables)) {
        for engine in ["duckdb", "spark", "trino", "clickhouse"] {
            assert!(checked.agreed.iter().any(|e| e == engine), "{engine} on `{table}` on S3: {checked:?}");
        }
    }
}

/// Runs `inlet run` in each of `dirs` at once; their reports, or `None` when two of them
/// claim to have created the same table version. S3 creates a log entry once (`If-None-Match:
/// *`); moto checks and writes without a lock, so two racing writers now and then both
/// "create" one version and the later one overwrites the earlier: a commit lost on moto's
/// side that S3 refuses. Such a round proves nothing either way and is run again.
fn race(dirs: &[std::path::PathBuf]) -> Option<Vec<serde_json::Value>> {
    let children: Vec<_> = dirs.iter().map(|dir| spawn_run(dir)).collect();
    let mut reports = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a writer failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        reports.push(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap());
    }
    let mut versions: Vec<i64> = reports
        .iter()
        .flat_map(|r| r["sources"][0]["commits"].as_array().cloned().unwrap_or_default())
        .map(|c| c["table_version"].as_i64().unwrap())
        .collect();
    versions.sort_unstable();
    let claimed = versions.len();
    versions.dedup();
    if versions.len() < claimed {
        eprintln!("moto let two writers create one table version ({versions:?} of {claimed} commits); racing again");
        return None;
    }
    Some(reports)
}

/// Rounds of a race on moto, at most: one that moto's unlocked conditional PUT spoils is
/// rare, three in a row would be a fault of ours.
const RACE_ROUNDS: usize = 3;

#[test]
fn writers_racing_on_s3_lose_no_commit_and_double_no_file() {
    let Some(s3) = s3("writers_racing_on_s3_lose_no_commit_and_double_no_file") else { return };

    // Four processes, four sources, one table; one commit per file, all at once, the
    // table's creation included.
    let raced = (0..RACE_ROUNDS).find_map(|_| {
        let bucket = s3.bucket("race");
        let lake = format!("s3://{bucket}/lake");
        let scratch = Scratch::new();
        for p in 0..4u64 {
            scratch.write(
                &format!("p{p}/inlet.toml"),
                orders_pipeline(
                    &format!("writer-{p}"),
                    &lake,
                    &format!("feed{p}"),
                    "bronze.events",
                    "max_files_per_commit = 1",
                ),
            );
            for f in 0..5 {
                scratch.write(&format!("p{p}/landing/f{f}.csv"), orders(p * 10_000 + f * 100, 100));
            }
        }
        race(&(0..4).map(|p| scratch.path(&format!("p{p}"))).collect::<Vec<_>>()).map(|_| bucket)
    });
    let bucket = raced.expect("every round of the race met moto's unlocked conditional PUT");
    let lake = format!("s3://{bucket}/lake");
    let table = format!("{lake}/bronze/events");
    assert_eq!(inlet_tests::rows_and_distinct(&table, "order_id"), (2000, 2000), "no lost commit");
    let log = s3.keys(&bucket, "lake/bronze/events/_delta_log/");
    assert_eq!(log.iter().filter(|k| k.ends_with(".json")).count(), 20, "{log:?}");

    // Two processes running the same source over the same files: the ledger and the `txn`
    // decide, so each file is in once, whoever wins each race.
    let (same_lake, reports) = (0..RACE_ROUNDS)
        .find_map(|round| {
            let same = Scratch::new();
            let same_lake = format!("{lake}-same-{round}");
            same.pipeline(&orders_pipeline("same", &same_lake, "shared", "bronze.shared", "max_files_per_commit = 1"));
            for f in 0..12 {
                same.write(&format!("landing/f{f:02}.csv"), orders(f * 100, 100));
            }
            let dir = same.dir.path().to_path_buf();
            race(&[dir.clone(), dir]).map(|reports| (same_lake, reports))
        })
        .expect("every round of the race met moto's unlocked conditional PUT");
    let ingested: u64 = reports.iter().map(|r| r["sources"][0]["files_ingested"].as_u64().unwrap()).sum();
    assert_eq!(ingested, 12, "each file ingested by exactly one of the two");
    assert_eq!(inlet_tests::rows_and_distinct(&format!("{same_lake}/bronze/shared"), "order_id"), (1200, 1200));
}

#[test]
fn landing_on_s3_is_listed_streamed_and_ingested_once() {
    let Some(s3) = s3("landing_on_s3_is_listed_streamed_and_ingested_once") else { return };
    let landing = s3.bucket("landing");
    let lake = s3.bucket("lake");
    let scratch = Scratch::new();
    scratch.pipeline(&format!(
        r#"
[pipeline]
name = "s3-landing"
lake = "s3://{lake}/warehouse"

[sources.drops]
type = "files"
path = "s3://{landing}/incoming/"
format = "csv"
pattern = "**/*.csv*"
target = "bronze.drops"
schema = {{ order_id = "bigint", amount = "decimal(10,2)" }}
"#
    ));
    // Plain, gzipped, an awkward key, a 6 MB multipart upload, a marker file and an object
    // outside the prefix.
    s3.python(&format!(
        r#"
import gzip, io
from boto3.s3.transfer import TransferConfig
def orders(first, n):
    return "order_id,amount\n" + "".join(f"{{i}},{{i % 7}}.50\n" for i in range(first, first + n))
s3.put_object(Bucket='{landing}', Key='incoming/a.csv', Body=orders(0, 100).encode())
s3.put_object(Bucket='{landing}', Key='incoming/b.csv.gz', Body=gzip.compress(orders(1000, 50).encode()))
s3.put_object(Bucket='{landing}', Key='incoming/2024 01/c+d.csv', Body=orders(2000, 10).encode())
big = orders(100000, 600000).encode()
assert len(big) > 6 * 1024 * 1024
s3.upload_fileobj(io.BytesIO(big), '{landing}', 'incoming/big.csv',
                  Config=TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
s3.put_object(Bucket='{landing}', Key='incoming/_SUCCESS', Body=b'')
s3.put_object(Bucket='{landing}', Key='elsewhere/x.csv', Body=orders(9000, 5).encode())
"#
    ));
    let run = scratch.run_ok();
    let source = run.source("drops");
    assert_eq!(source["files_ingested"], 4, "{source}");
    assert_eq!(source["rows"], 600_160, "{source}");
    assert_eq!(scratch.run_ok().source("drops")["files_ingested"], 0, "nothing twice");

    let table = format!("s3://{lake}/warehouse/bronze/drops");
    let files =
        inlet_tests::duckdb(&format!("SELECT _source_file, COUNT(*) FROM delta_scan('{table}') GROUP BY 1 ORDER BY 1"));
    let files: Vec<(String, i64)> =
        files.iter().map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_i64().unwrap())).collect();
    assert_eq!(
        files,
        [
            ("2024 01/c+d.csv".to_owned(), 10),
            ("a.csv".to_owned(), 100),
            ("b.csv.gz".to_owned(), 50),
            ("big.csv".to_owned(), 600_000)
        ]
    );

    // The ledger keeps each object's entity tag.
    let ledger = scratch.inlet(&["files", "bronze.drops", "--output", "json"]).report();
    let etag = ledger.as_array().unwrap().iter().find(|e| e["path"] == "a.csv").unwrap()["etag"].clone();
    assert!(etag.as_str().is_some_and(|t| t.len() > 2), "{ledger}");

    // Written again with the same bytes (a new time, the same tag): not a change.
    let rewrite = |shift: u32| {
        s3.python(&format!(
            r#"
body = "order_id,amount\n" + "".join(f"{{i}},{{(i + {shift}) % 7}}.50\n" for i in range(0, 100))
s3.put_object(Bucket='{landing}', Key='incoming/a.csv', Body=body.encode())
"#
        ))
    };
    std::thread::sleep(std::time::Duration::from_millis(1100));
    rewrite(0);
    let run = scratch.run_ok();
    let source = run.source("drops");
    assert_eq!(
        (source["files_ingested"].as_u64(), source["changed_files"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );

    // Replaced by other bytes of the same size: reported with both tags, not doubled.
    rewrite(1);
    let run = scratch.run_ok();
    let source = run.source("drops");
    assert_eq!(source["files_ingested"], 0, "{source}");
    let changed = &source["changed_files"][0];
    assert_eq!(changed["path"], "a.csv", "{source}");
    assert_eq!(changed["size_bytes"], changed["previous_size_bytes"], "{source}");
    assert_eq!(changed["previous_etag"], etag, "{source}");
    assert_ne!(changed["etag"], etag, "{source}");
}

#[test]
fn clean_source_deletes_or_moves_objects_after_their_commit() {
    let Some(s3) = s3("clean_source_deletes_or_moves_objects_after_their_commit") else { return };
    let landing = s3.bucket("clean");
    let scratch = Scratch::new();
    let pipeline = |clean: &str| {
        format!(
            r#"
[pipeline]
name = "clean"
lake = "s3://{landing}/lake"

[sources.moved]
type = "files"
path = "s3://{landing}/in/moved/"
format = "csv"
target = "bronze.moved"
{clean}

[sources.deleted]
type = "files"
path = "s3://{landing}/in/deleted/"
format = "csv"
target = "bronze.deleted"
clean_source = "delete"
"#
        )
    };
    scratch
        .pipeline(&pipeline(&format!("clean_source = \"move\"\nclean_source_move_to = \"s3://{landing}/archive/\"")));
    s3.python(&format!(
        r#"
for i in range(3):
    s3.put_object(Bucket='{landing}', Key=f'in/moved/day=1/m{{i}}.csv', Body=f'id\n{{i}}\n'.encode())
    s3.put_object(Bucket='{landing}', Key=f'in/deleted/d{{i}}.csv', Body=f'id\n{{i}}\n'.encode())
"#
    ));
    let run = scratch.run_ok();
    assert_eq!(run.source("moved")["files_ingested"], 3);
    assert_eq!(run.source("deleted")["files_ingested"], 3);
    assert!(s3.keys(&landing, "in/").is_empty(), "{:?}", s3.keys(&landing, "in/"));
    assert_eq!(s3.keys(&landing, "archive/"), ["archive/day=1/m0.csv", "archive/day=1/m1.csv", "archive/day=1/m2.csv"]);
    let rows = inlet_tests::duckdb(&format!("SELECT COUNT(*) FROM delta_scan('s3://{landing}/lake/bronze/moved')"));
    assert_eq!(single_i64(&rows), 3);
    // Nothing left to do, nothing done twice.
    let again = scratch.run_ok();
    assert_eq!(again.source("moved")["commits"].as_array().unwrap().len(), 0);
}

#[test]
fn s3_event_notifications_on_sqs_land_each_object_once() {
    let Some(s3) = s3("s3_event_notifications_on_sqs_land_each_object_once") else { return };
    let landing = s3.bucket("drops");
    // URL-encoded keys, removals and a first `s3:TestEvent` from moto.
    let queue_url = s3.notification_queue(&landing, &["s3:ObjectCreated:*", "s3:ObjectRemoved:*"], "");
    let scratch = Scratch::new();
    scratch.pipeline(&format!(
        r#"
[pipeline]
name = "notified"

[pipeline.serve]
listen = "127.0.0.1:0"

[sources.drops]
type = "files"
path = "s3://{landing}/incoming/"
format = "csv"
target = "bronze.drops"
schema = {{ order_id = "bigint", amount = "decimal(10,2)" }}
discovery = "notifications"
queue_url = "{queue_url}"
reconcile_interval_secs = 3600
clean_source = "move"
clean_source_move_to = "s3://{landing}/archive/"
"#
    ));
    let mut serve = crate::serve::Serve::start(&scratch);
    // Its first look listed the (empty) prefix; within `reconcile_interval_secs` it learns of
    // objects from the queue alone.
    serve.wait_for("inlet_runs_total", 1.0);
    s3.python(&format!(
        r#"
import io
from boto3.s3.transfer import TransferConfig
def orders(first, n):
    return ("order_id,amount\n" + "".join(f"{{i}},{{i % 7}}.50\n" for i in range(first, first + n))).encode()
s3.put_object(Bucket='{landing}', Key='incoming/a.csv', Body=orders(0, 10))
s3.put_object(Bucket='{landing}', Key='incoming/2024 01/b+c.csv', Body=orders(100, 10))
s3.upload_fileobj(io.BytesIO(orders(100000, 600000)), '{landing}', 'incoming/big.csv',
                  Config=TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
s3.put_object(Bucket='{landing}', Key='elsewhere/x.csv', Body=orders(900, 5))
event = lambda key: json.dumps({{'Records': [{{'eventName': 'ObjectCreated:Put', 's3': {{'bucket': {{'name': '{landing}'}}, 'object': {{'key': key}}}}}}]}})
# A duplicate event, an event for an object deleted before it was read, a malformed message.
sqs.send_message(QueueUrl='{queue_url}', MessageBody=event('incoming/a.csv'))
sqs.send_message(QueueUrl='{queue_url}', MessageBody=event('incoming/ghost.csv'))
sqs.send_message(QueueUrl='{queue_url}', MessageBody='this is not an S3 event')
"#
    ));
    serve.wait_for("inlet_rows_ingested_total", 600_020.0);
    // Every message is deleted once its objects are in; the objects are archived.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = s3.python(&format!(
            "a = sqs.get_queue_attributes(QueueUrl='{queue_url}', AttributeNames=['All'])['Attributes']\nprint(int(a['ApproximateNumberOfMessages']) + int(a['ApproximateNumberOfMessagesNotVisible']))"
        ));
        if left.trim() == "0" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{} messages left on the queue", left.trim());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(s3.keys(&landing, "archive/"), ["archive/2024 01/b+c.csv", "archive/a.csv", "archive/big.csv"]);
    assert_eq!(serve.metric("inlet_files_ingested_total"), 3.0, "the duplicate event is one file");
    assert_eq!(serve.metric("inlet_queue_messages_malformed_total"), 1.0);
    assert_eq!(scratch.rows_and_distinct("bronze.drops", "order_id"), (600_020, 600_020));
    assert_eq!(serve.signal("-TERM"), Some(0));
}

#[test]
fn an_object_store_outage_is_ridden_out_with_nothing_partial_or_lost() {
    let Some(s3) = s3("an_object_store_outage_is_ridden_out_with_nothing_partial_or_lost") else { return };
    // 500s and cut connections for a few seconds.
    ride_out(&s3, |proxy, on| proxy.failing(on), std::time::Duration::from_secs(4));
}

#[test]
fn an_object_store_that_hangs_is_ridden_out_with_nothing_partial_or_lost() {
    let Some(s3) = s3("an_object_store_that_hangs_is_ridden_out_with_nothing_partial_or_lost") else { return };
    // Longer than the client's 30 s request timeout: requests time out and are sent again,
    // and the ones given up on (a commit among them) still reach the server afterwards.
    let proxy = ride_out(&s3, |proxy, on| proxy.hanging(on), std::time::Duration::from_secs(40));
    assert!(proxy.abandoned() > 0, "no request timed out during the hang");
}

/// Serve lands files in a lake reached through a proxy that `fault` turns on for `lasting`
/// while more files arrive: every row ends up once in bronze and silver, and only whole
/// files are ever visible.
fn ride_out(
    s3: &inlet_tests::S3,
    fault: impl Fn(&inlet_tests::FaultProxy, bool),
    lasting: std::time::Duration,
) -> inlet_tests::FaultProxy {
    let bucket = s3.bucket("outage");
    // inlet reaches the lake through a proxy that fails on command; DuckDB reads it directly.
    let proxy = inlet_tests::FaultProxy::start(s3.endpoint.trim_start_matches("http://"));
    let scratch = Scratch::new();
    scratch.pipeline(&orders_pipeline(
        "outage",
        &format!("s3://{bucket}/lake"),
        "orders",
        "bronze.orders",
        r#"debounce_ms = 100
max_files_per_commit = 1

[pipeline.serve]
listen = "127.0.0.1:0"

[pipeline.retry]
max_attempts = 1000
initial_backoff_ms = 100
max_backoff_secs = 1

[tables."silver.orders"]
sql = "SELECT order_id, amount FROM bronze.orders"
write = "merge"
keys = ["order_id"]
"#,
    ));
    std::fs::create_dir_all(scratch.path("landing")).unwrap();
    let endpoint = format!("http://{}", proxy.address);
    let serve = crate::serve::Serve::start_with(&scratch, &[("AWS_ENDPOINT_URL", &endpoint)]);
    for i in 0..3 {
        scratch.write(&format!("landing/a{i}.csv"), orders(i * 100, 100));
    }
    serve.wait_for("inlet_rows_ingested_total", 300.0);

    // The store fails while more files arrive, then comes back.
    fault(&proxy, true);
    for i in 0..4 {
        scratch.write(&format!("landing/b{i}.csv"), orders(1000 + i * 100, 100));
    }
    std::thread::sleep(lasting);
    let during = inlet_tests::duckdb(&format!("SELECT COUNT(*) FROM delta_scan('s3://{bucket}/lake/bronze/orders')"));
    assert_eq!(single_i64(&during) % 100, 0, "only whole files are ever visible");
    fault(&proxy, false);

    serve.wait_for("inlet_rows_ingested_total", 700.0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let rows = inlet_tests::duckdb_batch(&[
            format!("SELECT COUNT(*), COUNT(DISTINCT order_id) FROM delta_scan('s3://{bucket}/lake/bronze/orders')"),
            format!("SELECT COUNT(*) FROM delta_scan('s3://{bucket}/lake/silver/orders')"),
        ]);
        let bronze = (rows[0][0][0].as_i64(), rows[0][0][1].as_i64());
        assert_eq!(bronze, (Some(700), Some(700)), "every row once");
        if rows[1][0][0].as_i64() == Some(700) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "silver never caught up: {rows:?}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    proxy
}

#[test]
fn two_serve_processes_share_a_queue_and_land_500_objects_once() {
    let Some(s3) = s3("two_serve_processes_share_a_queue_and_land_500_objects_once") else { return };
    let bucket = s3.bucket("shared");
    let queue_url = s3.notification_queue(&bucket, &["s3:ObjectCreated:*"], "in/");
    let pipeline = format!(
        r#"
[pipeline]
name = "shared"
lake = "s3://{bucket}/lake"

[pipeline.serve]
listen = "127.0.0.1:0"

[pipeline.retry]
max_attempts = 1000
initial_backoff_ms = 50
max_backoff_secs = 1

[sources.drops]
type = "files"
path = "s3://{bucket}/in/"
format = "csv"
target = "bronze.drops"
schema = {{ order_id = "bigint", amount = "decimal(10,2)" }}
discovery = "notifications"
queue_url = "{queue_url}"
reconcile_interval_secs = 3600
max_files_per_commit = 100
"#
    );
    let (one, two) = (Scratch::new(), Scratch::new());
    one.pipeline(&pipeline);
    two.pipeline(&pipeline);
    let first = crate::serve::Serve::start(&one);
    let second = crate::serve::Serve::start(&two);
    first.wait_for("inlet_runs_total", 1.0);
    second.wait_for("inlet_runs_total", 1.0);
    s3.python(&format!(
        r#"
for i in range(500):
    s3.put_object(Bucket='{bucket}', Key=f'in/part-{{i:03}}.csv', Body=f'order_id,amount\n{{i}},1.00\n{{i + 1000}},2.00\n'.encode())
"#
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while first.metric("inlet_files_ingested_total") + second.metric("inlet_files_ingested_total") < 500.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} + {} files",
            first.metric("inlet_files_ingested_total"),
            second.metric("inlet_files_ingested_total")
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let total = first.metric("inlet_files_ingested_total") + second.metric("inlet_files_ingested_total");
    assert_eq!(total, 500.0, "no file taken by both");
    let rows = inlet_tests::duckdb(&format!(
        "SELECT COUNT(*), COUNT(DISTINCT order_id), COUNT(DISTINCT _source_file) FROM delta_scan('s3://{bucket}/lake/bronze/drops')"
    ));
    assert_eq!(rows[0], [serde_json::json!(1000), serde_json::json!(1000), serde_json::json!(500)]);
}

#[test]
fn held_messages_stay_hidden_until_their_files_are_done_and_go_back_when_let_go() {
    use inlet_connectors::s3::S3Prefix;
    use inlet_connectors::sqs::S3Notifications;
    use inlet_engine::source::FileSource;
    use std::time::Duration;

    let Some(s3) = s3("held_messages_stay_hidden_until_their_files_are_done_and_go_back_when_let_go") else {
        return;
    };
    let landing = s3.bucket("held");
    let queue_url = s3.notification_queue(&landing, &["s3:ObjectCreated:*"], "in/");
    s3.python(&format!(
        "for name in ['a', 'b', 'c']:\n    s3.put_object(Bucket='{landing}', Key=f'in/{{name}}.csv', Body=b'id\\n1\\n')"
    ));
    // What is on the queue for others: (visible, hidden).
    let queue = || -> (i64, i64) {
        let out = s3.python(&format!(
            "a = sqs.get_queue_attributes(QueueUrl='{queue_url}', AttributeNames=['All'])['Attributes']\nprint(a['ApproximateNumberOfMessages'], a['ApproximateNumberOfMessagesNotVisible'])"
        ));
        let counts: Vec<i64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
        (counts[0], counts[1])
    };

    // Messages are hidden for 6 s at a time, renewed every 1.5 s while held.
    let prefix = S3Prefix::new(&format!("s3://{landing}/in/"), None, false).unwrap();
    let source =
        S3Notifications::new(prefix, &queue_url, Duration::from_secs(3600), Duration::from_secs(6), 1000).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Looking (what `inlet status` does) receives nothing: every message stays visible.
    let peeked = runtime.block_on(source.peek()).unwrap();
    assert_eq!(peeked.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a.csv", "b.csv", "c.csv"]);
    let (visible, hidden) = queue();
    assert_eq!(hidden, 0, "peeking hid {hidden} messages");
    assert!(visible >= 3, "{visible} messages visible");
    let mut files = runtime.block_on(source.list()).unwrap();
    for _ in 0..10 {
        if files.len() >= 3 {
            break;
        }
        files.extend(runtime.block_on(source.list()).unwrap());
    }
    let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(names, ["a.csv", "b.csv", "c.csv"]);
    assert_eq!(queue(), (0, 3), "the test event is deleted, the three announcements held");

    // Held for three times the visibility timeout: never handed to another consumer.
    std::thread::sleep(Duration::from_secs(18));
    assert_eq!(queue(), (0, 3), "held messages were renewed");

    // The file that is done has its message deleted; the others go back at once when the
    // source lets go, not after the timeout.
    runtime.block_on(source.done(&files[..1])).unwrap();
    assert_eq!(queue(), (0, 2));
    drop(source);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while queue() != (2, 0) {
        assert!(std::time::Instant::now() < deadline, "released messages not back: {:?}", queue());
        std::thread::sleep(Duration::from_millis(100));
    }
    let keys = s3.python(&format!(
        r#"
from urllib.parse import unquote_plus
keys = []
for m in sqs.receive_message(QueueUrl='{queue_url}', MaxNumberOfMessages=10).get('Messages', []):
    keys += [unquote_plus(r['s3']['object']['key']) for r in json.loads(m['Body'])['Records']]
print(json.dumps(sorted(keys)))
"#
    ));
    assert_eq!(serde_json::from_str::<Vec<String>>(keys.trim()).unwrap(), ["in/b.csv", "in/c.csv"]);
}

#[test]
fn inlet_run_takes_everything_a_queue_holds_a_commit_at_a_time() {
    let Some(s3) = s3("inlet_run_takes_everything_a_queue_holds_a_commit_at_a_time") else { return };
    let landing = s3.bucket("backlog");
    let queue_url = s3.notification_queue(&landing, &["s3:ObjectCreated:*"], "in/");
    let scratch = Scratch::new();
    scratch.pipeline(&format!(
        r#"
[pipeline]
name = "backlog"
lake = "s3://{landing}/lake"

[sources.drops]
type = "files"
path = "s3://{landing}/in/"
format = "csv"
target = "bronze.drops"
discovery = "notifications"
queue_url = "{queue_url}"
max_files_per_commit = 10
"#
    ));
    let first = scratch.run_ok();
    assert_eq!(first.source("drops")["files_ingested"], 0);
    // A backlog of 35 announcements; a listing takes at most one commit's worth (10).
    s3.python(&format!(
        "for i in range(35):\n    s3.put_object(Bucket='{landing}', Key=f'in/o{{i:02}}.csv', Body=f'id\\n{{i}}\\n'.encode())"
    ));
    let run = scratch.run_ok();
    let source = run.source("drops");
    assert_eq!(source["files_ingested"], 35, "{source}");
    assert_eq!(source["commits"].as_array().unwrap().len(), 4, "{source}");
    let left = s3.python(&format!(
        "a = sqs.get_queue_attributes(QueueUrl='{queue_url}', AttributeNames=['All'])['Attributes']\nprint(int(a['ApproximateNumberOfMessages']) + int(a['ApproximateNumberOfMessagesNotVisible']))"
    ));
    assert_eq!(left.trim(), "0", "the run drained the queue");
    assert_eq!(inlet_tests::rows_and_distinct(&format!("s3://{landing}/lake/bronze/drops"), "id"), (35, 35));
}

#[test]
fn a_group_cut_off_between_its_quarantine_and_data_commits_is_finished_once() {
    let Some(s3) = s3("a_group_cut_off_between_its_quarantine_and_data_commits_is_finished_once") else { return };
    let bucket = s3.bucket("intent");
    // Data commits of bronze.orders are refused by the proxy on command; its quarantine's go.
    let proxy = inlet_tests::FaultProxy::start(s3.endpoint.trim_start_matches("http://"));
    let scratch = Scratch::new();
    scratch.pipeline(&orders_pipeline("intent", &format!("s3://{bucket}/lake"), "orders", "bronze.orders", ""));
    let cut_off_run = |file: &str, first: u64, good: u64| {
        scratch.write(&format!("landing/{file}"), format!("{}x{first},1.00\n", orders(first, good)));
        proxy.forbid_puts(Some("/bronze/orders/_delta_log/"));
        let out = Command::new(inlet_bin())
            .args(["run", "--output", "json"])
            .current_dir(scratch.path(""))
            .env("AWS_ENDPOINT_URL", format!("http://{}", proxy.address))
            .env("INLET_LOG", "error")
            .output()
            .unwrap();
        proxy.forbid_puts(None);
        assert_ne!(out.status.code(), Some(0), "the data commit was refused");
    };
    let counts = |table: &str| -> Vec<(String, i64)> {
        let rows = inlet_tests::duckdb(&format!(
            "SELECT _source_file, COUNT(*) FROM delta_scan('s3://{bucket}/lake/bronze/{table}') GROUP BY 1 ORDER BY 1"
        ));
        rows.iter().map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_i64().unwrap())).collect()
    };

    // a.csv's bad row is committed to the quarantine, its data commit is refused.
    cut_off_run("a.csv", 0, 10);
    assert_eq!(counts("orders__quarantine"), [("a.csv".to_owned(), 1)]);
    // The next run finishes that group: the data, and no second copy of the bad row.
    let run = scratch.run_ok();
    assert_eq!(run.source("orders")["files_ingested"], 1);
    assert_eq!(counts("orders"), [("a.csv".to_owned(), 10)]);
    assert_eq!(counts("orders__quarantine"), [("a.csv".to_owned(), 1)]);

    // b.csv is cut off the same way, then deleted before the next run; c.csv arrives. b was
    // read whole before its quarantine commit: its staged data commit is published as it
    // was, without its file. c's group commits its own bad row.
    cut_off_run("b.csv", 100, 5);
    std::fs::remove_file(scratch.path("landing/b.csv")).unwrap();
    scratch.write("landing/c.csv", format!("{}x200,1.00\n", orders(200, 4)));
    let run = scratch.run_ok();
    assert_eq!(run.source("orders")["files_ingested"], 2);
    assert_eq!(counts("orders"), [("a.csv".to_owned(), 10), ("b.csv".to_owned(), 5), ("c.csv".to_owned(), 4)]);
    assert_eq!(
        counts("orders__quarantine"),
        [("a.csv".to_owned(), 1), ("b.csv".to_owned(), 1), ("c.csv".to_owned(), 1)]
    );

    // d.csv is cut off, and the files its group staged are removed before the next run (as a
    // VACUUM would, later): the group is redone from d.csv, its bad row not committed again.
    cut_off_run("d.csv", 300, 3);
    let removed = s3.python(&format!(
        r#"
logs = s3.list_objects_v2(Bucket='{bucket}', Prefix='lake/bronze/orders__quarantine/_delta_log/')['Contents']
last = sorted(o['Key'] for o in logs if o['Key'].endswith('.json') and o['Key'].rsplit('/', 1)[1][0].isdigit())[-1]
lines = s3.get_object(Bucket='{bucket}', Key=last)['Body'].read().decode().splitlines()
intent = [json.loads(l)['commitInfo']['inlet_intent'] for l in lines if '"commitInfo"' in l][0]
for add in intent['commit']['adds']:
    s3.delete_object(Bucket='{bucket}', Key='lake/bronze/orders/' + add['path'])
print(len(intent['commit']['adds']))
"#
    ));
    assert!(removed.trim().parse::<usize>().unwrap() >= 1, "{removed}");
    let run = scratch.run_ok();
    assert_eq!(run.source("orders")["files_ingested"], 1);
    assert_eq!(
        counts("orders"),
        [("a.csv".to_owned(), 10), ("b.csv".to_owned(), 5), ("c.csv".to_owned(), 4), ("d.csv".to_owned(), 3)]
    );
    assert_eq!(
        counts("orders__quarantine"),
        [("a.csv".to_owned(), 1), ("b.csv".to_owned(), 1), ("c.csv".to_owned(), 1), ("d.csv".to_owned(), 1)]
    );
}

/// A derived table whose reads of its upstream's data files fail (the object store answers
/// 503, past every retry): the failure is the store's, external and retryable, not the
/// SQL's; nothing is committed, and it succeeds once the store does.
#[test]
fn a_storage_failure_inside_a_transform_is_external_and_retryable() {
    let Some(s3) = s3("a_storage_failure_inside_a_transform_is_external_and_retryable") else { return };
    let bucket = s3.bucket("reads");
    let proxy = inlet_tests::FaultProxy::start(s3.endpoint.trim_start_matches("http://"));
    let scratch = Scratch::new();
    let pipeline = orders_pipeline("reads", &format!("s3://{bucket}/lake"), "orders", "bronze.orders", "")
        + "\n[tables.\"silver.orders\"]\nsql = \"SELECT order_id, amount FROM bronze.orders\"\nwrite = \"merge\"\nkeys = [\"order_id\"]\n";
    scratch.pipeline(&pipeline);
    let through_proxy = [("AWS_ENDPOINT_URL", format!("http://{}", proxy.address))];
    let env: Vec<(&str, &str)> = through_proxy.iter().map(|(k, v)| (*k, v.as_str())).collect();
    scratch.write("landing/a.csv", orders(0, 20));
    // Data files of bronze.orders cannot be read: its commit works, the merge over it fails.
    proxy.fail_gets(Some("/lake/bronze/orders/part-"));
    let failed = scratch.inlet_env(&["run", "--output", "json"], &env, "error");
    proxy.fail_gets(None);
    assert_eq!(failed.code, Some(2), "{}\n{}", failed.stdout, failed.stderr);
    let report: serde_json::Value = serde_json::from_str(&failed.stdout).unwrap();
    assert_eq!(report["sources"][0]["rows"], 20);
    let table = &report["tables"][0];
    assert_eq!(table["status"], "failed", "{table}");
    assert_eq!(table["error"]["kind"], "external", "{table}");
    assert_eq!(table["error"]["retryable"], true, "{table}");
    let message = table["error"]["message"].as_str().unwrap();
    assert!(message.contains("silver.orders") && message.contains("reading failed"), "{message}");
    assert_eq!(table["table_version"], serde_json::Value::Null, "nothing committed");
    // The store is back: the next run merges.
    let run = scratch.run_ok_env(&env);
    assert_eq!(run.report()["tables"][0]["rows"]["inserted"], 20);
}
