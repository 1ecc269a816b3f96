//! The ledger survives checkpoints and expired commits, and is rebuilt or reconciled from
//! the log when its snapshot is missing or stale.

use inlet_tests::{Scratch, single_i64};

const PIPELINE: &str = r#"
[pipeline]
name = "ledger"

[sources.logs]
type = "files"
path = "landing"
format = "ndjson"
target = "bronze.logs"
max_files_per_commit = 1
"#;

fn add_files(scratch: &Scratch, range: std::ops::Range<usize>) {
    for i in range {
        scratch.write(
            &format!("landing/{i:03}.ndjson"),
            format!("{{\"file\": {i}, \"v\": 1}}\n{{\"file\": {i}, \"v\": 2}}\n"),
        );
    }
}

fn log_dir(scratch: &Scratch) -> std::path::PathBuf {
    scratch.path("lake/bronze/logs/_delta_log")
}

fn snapshot(scratch: &Scratch) -> std::path::PathBuf {
    scratch.path("lake/bronze/logs/_inlet/ledger/inlet.logs.json")
}

#[test]
fn survives_checkpoint_and_expired_commits() {
    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    add_files(&scratch, 0..12);
    let run = scratch.run_ok();
    assert_eq!(run.source("logs")["commits"].as_array().unwrap().len(), 12);
    let version = run.source("logs")["table_version"].as_i64().unwrap();

    // Checkpoint, then expire every JSON commit before it, as log cleanup does.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let url = url_of(&scratch.path("lake/bronze/logs"));
        let table = deltalake::open_table(url).await.unwrap();
        deltalake::checkpoints::create_checkpoint(&table, None).await.unwrap();
    });
    for v in 0..version {
        std::fs::remove_file(log_dir(&scratch).join(format!("{v:020}.json"))).unwrap();
    }

    let again = scratch.run_ok();
    assert_eq!(again.source("logs")["files_ingested"], 0);
    assert_eq!(again.source("logs")["table_version"], version, "no new version");
    add_files(&scratch, 12..13);
    let more = scratch.run_ok();
    assert_eq!(more.source("logs")["files_ingested"], 1);
    assert_eq!(single_i64(&scratch.duckdb("bronze.logs", "SELECT count(*) FROM {t}")), 26);
    let files = scratch.inlet(&["files", "bronze.logs", "--output", "json"]);
    let entries: serde_json::Value = serde_json::from_str(&files.stdout).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 13);

    // Without its snapshot and without the old commits the ledger cannot be proven: refuse.
    std::fs::remove_file(snapshot(&scratch)).unwrap();
    let refused = scratch.inlet(&["run", "--output", "json"]);
    assert_eq!(refused.code, Some(3), "{}", refused.stdout);
    assert!(refused.source("logs")["error"]["message"].as_str().unwrap().contains("expired"));
    assert_eq!(single_i64(&scratch.duckdb("bronze.logs", "SELECT count(*) FROM {t}")), 26, "nothing was guessed");
}

#[test]
fn missing_or_stale_snapshots_are_rebuilt_from_the_log() {
    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    add_files(&scratch, 0..3);
    scratch.run_ok();
    let stale = std::fs::read(snapshot(&scratch)).unwrap();
    add_files(&scratch, 3..6);
    scratch.run_ok();

    // A stale snapshot (from three commits ago) is reconciled with the newer commits.
    std::fs::write(snapshot(&scratch), &stale).unwrap();
    let run = scratch.run_ok();
    assert_eq!(run.source("logs")["files_ingested"], 0);
    let fresh: serde_json::Value = serde_json::from_slice(&std::fs::read(snapshot(&scratch)).unwrap()).unwrap();
    assert_eq!(fresh["entries"].as_array().unwrap().len(), 6, "the snapshot was brought up to date");

    // A missing snapshot is rebuilt from the whole log.
    std::fs::remove_file(snapshot(&scratch)).unwrap();
    add_files(&scratch, 6..7);
    let run = scratch.run_ok();
    assert_eq!(run.source("logs")["files_ingested"], 1);
    assert_eq!(single_i64(&scratch.duckdb("bronze.logs", "SELECT count(*) FROM {t}")), 14);

    // A snapshot of another table is ignored, not trusted.
    let mut foreign: serde_json::Value = serde_json::from_slice(&std::fs::read(snapshot(&scratch)).unwrap()).unwrap();
    foreign["table_id"] = "someone-else".into();
    foreign["entries"] = serde_json::json!([]);
    std::fs::write(snapshot(&scratch), serde_json::to_vec(&foreign).unwrap()).unwrap();
    let run = scratch.run_ok();
    assert_eq!(run.source("logs")["files_ingested"], 0);
}

fn url_of(path: &std::path::Path) -> url::Url {
    url::Url::from_directory_path(path).unwrap()
}

#[test]
fn clean_source_moves_or_deletes_files_only_once_they_are_committed() {
    let scratch = Scratch::new();
    add_files(&scratch, 0..3);
    scratch.write("landing/sub/004.ndjson", "{\"file\": 4, \"v\": 1}\n");
    let moving = PIPELINE.replace(
        "max_files_per_commit = 1",
        "max_files_per_commit = 1\nrecursive = true\nclean_source = \"move\"\nclean_source_move_to = \"archive\"",
    );
    scratch.pipeline(&moving);
    let run = scratch.run_ok();
    assert_eq!(run.source("logs")["files_ingested"], 4);
    let mut archived: Vec<String> = walk(&scratch.path("archive"));
    archived.sort();
    assert_eq!(archived, ["000.ndjson", "001.ndjson", "002.ndjson", "sub/004.ndjson"]);
    assert!(walk(&scratch.path("landing")).is_empty());
    assert_eq!(single_i64(&scratch.duckdb("bronze.logs", "SELECT COUNT(*) FROM {t}")), 7);

    // Ingested while cleanup was off (or a crash cut the cleanup short): the next run with
    // `delete` removes them without ingesting them again; a file that did not parse is
    // still removed once its commit (with its quarantined rows) is in.
    scratch.pipeline(PIPELINE);
    add_files(&scratch, 10..12);
    scratch.write("landing/broken.ndjson", "{not json\n");
    assert_eq!(scratch.run_ok().source("logs")["files_ingested"], 3);
    assert_eq!(walk(&scratch.path("landing")).len(), 3);
    scratch
        .pipeline(&PIPELINE.replace("max_files_per_commit = 1", "max_files_per_commit = 1\nclean_source = \"delete\""));
    let run = scratch.run_ok();
    assert_eq!(run.source("logs")["commits"].as_array().unwrap().len(), 0);
    assert!(walk(&scratch.path("landing")).is_empty(), "{:?}", walk(&scratch.path("landing")));
    assert_eq!(single_i64(&scratch.duckdb("bronze.logs", "SELECT COUNT(*) FROM {t}")), 11);
}

/// Files under `dir`, relative, `/`-separated.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.map(Result::unwrap) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_dir() {
            out.extend(walk(&entry.path()).into_iter().map(|p| format!("{name}/{p}")));
        } else {
            out.push(name);
        }
    }
    out
}
