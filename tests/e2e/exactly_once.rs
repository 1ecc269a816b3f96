//! Exactly once under `kill -9`: kill runs at random moments, then check every row is in the
//! table once.

use std::process::Command;
use std::time::Duration;

use inlet_tests::{Scratch, inlet_bin, single_i64};
use rand::{Rng, SeedableRng};

const FILES: usize = 40;
const ROWS: usize = 2500;

#[test]
fn kill_nine_at_random_moments_loses_and_doubles_nothing() {
    let scratch = Scratch::new();
    scratch.pipeline(
        r#"
[pipeline]
name = "kill"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
schema = { amount = "decimal(12,2)" }
max_files_per_commit = 3
"#,
    );
    let mut bad_rows = 0;
    for file in 0..FILES {
        let mut text = String::from("order_id,amount,note\n");
        for row in 0..ROWS {
            if row == 7 && file % 5 == 0 {
                text.push_str("oops,not-money,bad\n");
                bad_rows += 1;
            } else {
                text.push_str(&format!("{},{}.{:02},\"note, {row}\"\n", file * ROWS + row, row, row % 100));
            }
        }
        scratch.write(&format!("landing/part-{file:03}.csv"), text);
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x1_7e7);
    let mut kills = 0;
    for _ in 0..14 {
        let mut child = Command::new(inlet_bin()).args(["run"]).current_dir(scratch.dir.path()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(10..700)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills > 0, "no run was killed; the test proves nothing");

    scratch.run_ok();
    let again = scratch.run_ok();
    assert_eq!(again.source("orders")["files_ingested"], 0);

    let total = (FILES * ROWS - bad_rows) as i64;
    let counts = scratch.duckdb(
        "bronze.orders",
        "SELECT count(*), count(DISTINCT (_source_file, _source_row)), count(DISTINCT order_id) FROM {t}",
    );
    assert_eq!(counts[0].iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>(), vec![total, total, total]);
    let bad_rows = bad_rows as i64;
    assert_eq!(
        scratch.rows_and_distinct("bronze.orders__quarantine", "(_source_file, _source_row)"),
        (bad_rows, bad_rows)
    );

    let files = scratch.inlet(&["files", "bronze.orders", "--output", "json"]);
    let entries: serde_json::Value = serde_json::from_str(&files.stdout).unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), FILES, "each file once in the ledger");
    let ledger_rows: i64 = entries.iter().map(|e| e["rows"].as_i64().unwrap()).sum();
    assert_eq!(ledger_rows, single_i64(&scratch.duckdb("bronze.orders", "SELECT count(*) FROM {t}")));
}

#[test]
fn two_concurrent_runs_commit_each_file_once() {
    let scratch = Scratch::new();
    scratch.pipeline(
        "[pipeline]\nname = \"twice\"\n\n[sources.o]\ntype = \"files\"\npath = \"landing\"\nformat = \"csv\"\ntarget = \"bronze.o\"\nmax_files_per_commit = 2\n",
    );
    let write_wave = |prefix: &str| {
        for file in 0..8 {
            let rows: String = (0..500).map(|r| format!("{r},{prefix}{file}\n")).collect();
            scratch.write(&format!("landing/{prefix}-{file}.csv"), format!("n,tag\n{rows}"));
        }
    };
    // The first wave races to create the table, the others race to append to it. A run that
    // built on the other's commit instead of meeting it in the conflict checker doubled files
    // now and then; each wave is another chance to catch that.
    for prefix in ["a", "b", "c", "d", "e", "f"] {
        write_wave(prefix);
        let spawn =
            || Command::new(inlet_bin()).args(["run", "--output", "json"]).current_dir(scratch.dir.path()).output();
        let (first, second) = std::thread::scope(|s| {
            let first = s.spawn(spawn);
            let second = s.spawn(spawn);
            (first.join().unwrap().unwrap(), second.join().unwrap().unwrap())
        });
        for output in [&first, &second] {
            let code = output.status.code();
            assert!(code == Some(0) || code == Some(2), "a lost race is a retryable external error: {output:?}");
            if code == Some(2) {
                let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
                assert_eq!(report["sources"][0]["error"]["retryable"], true, "{report}");
            }
        }
    }
    scratch.run_ok();
    assert_eq!(scratch.rows_and_distinct("bronze.o", "(_source_file, _source_row)"), (24_000, 24_000));
}
