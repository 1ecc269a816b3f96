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

    let run = scratch.run_ok();
    let again = scratch.run_ok();
    assert_eq!(again.source("orders")["files_ingested"], 0);
    let _ = run;

    let total = (FILES * ROWS - bad_rows) as i64;
    let counts = scratch.duckdb(
        "bronze.orders",
        "SELECT count(*), count(DISTINCT (_source_file, _source_row)), count(DISTINCT order_id) FROM {t}",
    );
    assert_eq!(counts[0].iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>(), vec![total, total, total]);
    let quarantine = scratch
        .duckdb("bronze.orders__quarantine", "SELECT count(*), count(DISTINCT (_source_file, _source_row)) FROM {t}");
    assert_eq!((quarantine[0][0].as_i64(), quarantine[0][1].as_i64()), (Some(bad_rows as i64), Some(bad_rows as i64)));

    let files = scratch.inlet(&["files", "bronze.orders", "--output", "json"]);
    let entries: serde_json::Value = serde_json::from_str(&files.stdout).unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), FILES, "each file once in the ledger");
    let ledger_rows: i64 = entries.iter().map(|e| e["rows"].as_i64().unwrap()).sum();
    assert_eq!(ledger_rows, single_i64(&scratch.duckdb("bronze.orders", "SELECT count(*) FROM {t}")));
}
