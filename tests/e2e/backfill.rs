//! `inlet backfill`: a `replace_partitions` table recomputed day by day, each day its own
//! commit; re-running is idempotent; a day whose rows went away is emptied; a failed day
//! leaves the others and `--missing` runs only what no backfill completed.

use inlet_tests::{Scratch, single_i64};

const PIPELINE: &str = r#"
[pipeline]
name = "backfill"

[sources.events]
type = "files"
path = "landing"
format = "csv"
target = "bronze.events"
schema = { day = "date", amount = "bigint" }

[tables."silver.daily"]
sql = "SELECT day, COUNT(*) AS events, SUM(amount) AS amount FROM bronze.events WHERE amount >= 0 GROUP BY day"
write = "replace_partitions"
partition_by = ["day"]
"#;

/// Rows per day: the 1st has 1, the 2nd 2, ... the 5th 12 (too many for the strict rule).
fn events() -> String {
    let mut csv = String::from("day,amount\n");
    for (day, n) in [(1, 1), (2, 2), (3, 3), (5, 12)] {
        for i in 0..n {
            csv.push_str(&format!("2024-01-0{day},{}\n", 10 * day + i));
        }
    }
    csv
}

fn daily(scratch: &Scratch) -> Vec<(String, i64)> {
    scratch
        .duckdb("silver.daily", "SELECT CAST(day AS VARCHAR), events FROM {t} ORDER BY day")
        .into_iter()
        .map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_i64().unwrap()))
        .collect()
}

fn backfill(scratch: &Scratch, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["backfill", "silver.daily", "--output", "json"];
    all.extend_from_slice(args);
    let run = scratch.inlet(&all);
    assert!(run.code.is_some(), "{run:?}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

fn statuses(report: &serde_json::Value) -> Vec<(String, String)> {
    report["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["window"].as_str().unwrap().to_owned(), w["report"]["status"].as_str().unwrap().to_owned()))
        .collect()
}

/// Commits in the table's log.
fn versions(scratch: &Scratch) -> usize {
    std::fs::read_dir(format!("{}/_delta_log", scratch.table("silver.daily")))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".json"))
        .count()
}

#[test]
fn backfill_replaces_one_day_per_commit_idempotently() {
    let scratch = Scratch::new();
    scratch.pipeline(PIPELINE);
    scratch.write("landing/events.csv", events());
    scratch.run_ok();
    let full = daily(&scratch);
    assert_eq!(full.len(), 4);
    let before = versions(&scratch);

    // Days 1-4: three days with rows are replaced, one commit each; day 4 has none and
    // nothing to remove, so it changes nothing.
    let report = backfill(&scratch, &["--from", "2024-01-01", "--to", "2024-01-04"]);
    assert_eq!(
        statuses(&report),
        [
            ("2024-01-01".into(), "committed".into()),
            ("2024-01-02".into(), "committed".into()),
            ("2024-01-03".into(), "committed".into()),
            ("2024-01-04".into(), "up_to_date".into()),
        ]
    );
    assert_eq!(versions(&scratch), before + 3, "one commit per window");
    assert_eq!(daily(&scratch), full, "same data after recomputing");
    // Each commit names its window in the log.
    let ops = inlet_tests::duckdb(&format!(
        "SELECT COUNT(*) FROM read_json_objects('{}/_delta_log/*.json') WHERE json LIKE '%window day = 2024-01-02%'",
        scratch.table("silver.daily")
    ));
    assert_eq!(single_i64(&ops), 1);

    // Again: idempotent.
    backfill(&scratch, &["--from", "2024-01-01", "--to", "2024-01-03"]);
    assert_eq!(daily(&scratch), full);

    // The logic changes so day 2 has no rows any more: its window is emptied, others stay.
    scratch.pipeline(&PIPELINE.replace("WHERE amount >= 0", "WHERE day <> DATE '2024-01-02'"));
    let report = backfill(&scratch, &["--from", "2024-01-02", "--to", "2024-01-02"]);
    assert_eq!(statuses(&report), [("2024-01-02".into(), "committed".into())]);
    let expected: Vec<(String, i64)> = full.iter().filter(|(d, _)| d != "2024-01-02").cloned().collect();
    assert_eq!(daily(&scratch), expected);

    // The logic changes for every day, but only day 1 is backfilled: the next run still
    // sees that the table's query changed since its last full run, and recomputes it all.
    let changed =
        PIPELINE.replace("WHERE amount >= 0", "WHERE day <> DATE '2024-01-02'").replace("COUNT(*)", "COUNT(*) + 100");
    scratch.pipeline(&changed);
    backfill(&scratch, &["--from", "2024-01-01", "--to", "2024-01-01"]);
    assert_eq!(daily(&scratch)[0].1, full[0].1 + 100);
    assert_eq!(daily(&scratch)[1].1, full[2].1, "day 3 not backfilled yet");
    let run = scratch.run_ok();
    let table = &run.report()["tables"][0];
    assert_eq!(table["status"], "committed", "{table}");
    let plus: Vec<(String, i64)> = expected.iter().map(|(d, n)| (d.clone(), n + 100)).collect();
    assert_eq!(daily(&scratch), plus);
}

#[test]
fn a_failed_window_leaves_the_others_and_missing_runs_only_it() {
    let scratch = Scratch::new();
    let strict = format!("{PIPELINE}\n[[tables.\"silver.daily\".expect]]\nname = \"few\"\nrule = \"events < 10\"\n");
    scratch.pipeline(&strict);
    scratch.write("landing/events.csv", events());
    // Only bronze: the table is built by the backfill alone.
    let run = scratch.inlet(&["run", "--source", "events"]);
    assert_eq!(run.code, Some(0), "{run:?}");

    let run = scratch.inlet(&["backfill", "silver.daily", "--from", "2024-01-01", "--to", "2024-01-05"]);
    assert_eq!(run.code, Some(1), "a failed window fails the command: {run:?}");
    assert!(run.stdout.contains("2024-01-05") && run.stdout.contains("few"), "{}", run.stdout);
    assert!(run.stdout.contains("5 windows run, 1 failed"), "{}", run.stdout);
    assert_eq!(daily(&scratch).len(), 3, "the other days landed");

    // The rule is relaxed; --missing runs day 5 only (day 4 completed: it had nothing).
    scratch.pipeline(&strict.replace("events < 10", "events < 100"));
    let report = backfill(&scratch, &["--from", "2024-01-01", "--to", "2024-01-06", "--missing"]);
    assert_eq!(
        statuses(&report),
        [("2024-01-05".into(), "committed".into()), ("2024-01-06".into(), "up_to_date".into())]
    );
    assert_eq!(report["already_done"].as_array().unwrap().len(), 4);
    assert_eq!(daily(&scratch).last().unwrap(), &("2024-01-05".to_owned(), 12));
    let report = backfill(&scratch, &["--from", "2024-01-01", "--to", "2024-01-06", "--missing"]);
    assert!(statuses(&report).is_empty(), "nothing left: {report}");

    // The run history holds a row per window.
    let rows = inlet_tests::duckdb(&format!(
        "SELECT COUNT(*) FROM delta_scan('{}') WHERE kind = 'backfill' AND status = 'failed' AND \"window\" = '2024-01-05'",
        scratch.path("lake/_inlet/runs").display()
    ));
    assert_eq!(single_i64(&rows), 1);

    // Not a replace_partitions table, or a bad date: a clear error.
    let run = scratch.inlet(&["backfill", "bronze.events", "--from", "2024-01-01", "--to", "2024-01-02"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("no derived table `bronze.events`"), "{}", run.stderr);
    let run = scratch.inlet(&["backfill", "silver.daily", "--from", "2024-13-01", "--to", "2024-01-02"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("--from") && run.stderr.contains("2024-13-01"), "{}", run.stderr);
}
