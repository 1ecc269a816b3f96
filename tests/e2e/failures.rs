//! Files that cannot be read at all, and files that change after ingestion.

use std::io::Write;

use inlet_tests::{Scratch, single_i64};

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

const PIPELINE: &str = r#"
[pipeline]
name = "files"

[sources.logs]
type = "files"
path = "landing"
format = "csv"
target = "bronze.logs"
"#;

#[test]
fn an_unreadable_file_is_reported_and_retried_while_others_go_in() {
    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    let body: String = (0..5000).map(|i| format!("{i},row {i}\n")).collect();
    let whole = gzip(&format!("n,text\n{body}"));
    scratch.write("landing/a.csv", "n,text\n1,one\n");
    scratch.write("landing/b.csv.gz", &whole[..whole.len() / 2]);

    let run = scratch.inlet(&["run", "--output", "json"]);
    assert_eq!(run.code, Some(4), "some files could not be read: {}", run.stderr);
    let source = run.source("logs");
    assert_eq!(source["files_ingested"], 1);
    assert_eq!(source["failed_files"][0]["path"], "b.csv.gz");
    assert_eq!(single_i64(&scratch.duckdb("bronze.logs", "SELECT count(*) FROM {t}")), 1, "nothing of the broken file");

    scratch.write("landing/b.csv.gz", &whole);
    let run = scratch.run_ok();
    assert_eq!(run.source("logs")["rows"], 5000);
    assert_eq!(single_i64(&scratch.duckdb("bronze.logs", "SELECT count(*) FROM {t}")), 5001);
}

#[test]
fn a_changed_file_is_reported_and_ingested_again_only_when_allowed() {
    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    scratch.write("landing/a.csv", "n,text\n1,one\n2,two\n");
    scratch.run_ok();
    scratch.write("landing/a.csv", "n,text\n1,one\n2,two\n3,three\n");

    let run = scratch.run_ok();
    let source = run.source("logs");
    assert_eq!(source["files_ingested"], 0);
    assert_eq!(source["changed_files"][0]["path"], "a.csv");
    assert_eq!(source["changed_files"][0]["previous_size_bytes"], 19);
    let human = scratch.inlet(&["run"]);
    assert!(human.stdout.contains("changed since ingestion"), "{}", human.stdout);
    assert_eq!(single_i64(&scratch.duckdb("bronze.logs", "SELECT count(*) FROM {t}")), 2);

    scratch.pipeline(&format!("{PIPELINE}allow_overwrites = true\n"));
    let run = scratch.run_ok();
    assert_eq!(run.source("logs")["files_reingested"], 1);
    assert_eq!(
        scratch.rows_and_distinct("bronze.logs", "_load_id"),
        (5, 2),
        "the new version lands as new rows of a new load"
    );
    let again = scratch.run_ok();
    assert_eq!(again.source("logs")["files_ingested"], 0);
    let files = scratch.inlet(&["files", "bronze.logs", "--output", "json"]);
    let entries: serde_json::Value = serde_json::from_str(&files.stdout).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 2, "both versions are in the ledger");
}
