//! Schema drift: each `on_new_columns` mode, with the table read back by DuckDB.

use inlet_tests::{Scratch, single_i64};

fn scratch_with(mode: &str) -> Scratch {
    let scratch = Scratch::new();
    scratch.pipeline(&format!(
        r#"
[pipeline]
name = "drift"

[sources.people]
type = "files"
path = "landing"
format = "csv"
target = "bronze.people"
on_new_columns = "{mode}"
"#
    ));
    scratch.write("landing/1.csv", "id,name\n1,ana\n2,bo\n");
    scratch.run_ok();
    scratch.write("landing/2.csv", "id,name,city,zip\n3,cy,Oslo,0150\n4,dee,,\n");
    scratch
}

#[test]
fn add_evolves_the_schema_in_the_same_run() {
    let scratch = scratch_with("add");
    let run = scratch.run_ok();
    let source = run.source("people");
    assert_eq!(source["rows"], 2);
    assert_eq!(source["added_columns"], serde_json::json!(["city", "zip"]));
    let rows = scratch.duckdb("bronze.people", "SELECT id, city, zip FROM {t} ORDER BY id");
    assert_eq!(rows[0][1], serde_json::Value::Null, "old rows read the new column as null");
    assert_eq!(rows[2][1], "Oslo");
    assert_eq!(rows[2][2], "0150", "leading zeros keep a column as text");
    assert_eq!(rows[3][1], serde_json::Value::Null);
}

#[test]
fn rescue_keeps_unknown_columns_as_json() {
    let scratch = scratch_with("rescue");
    scratch.run_ok();
    let rows = scratch.duckdb("bronze.people", "SELECT id, _rescued_data FROM {t} ORDER BY id");
    assert_eq!(rows[0][1], serde_json::Value::Null);
    assert_eq!(rows[2][1], r#"{"city":"Oslo","zip":"0150"}"#);
    assert_eq!(rows[3][1], serde_json::Value::Null, "no rescued value, no object");
    let columns =
        scratch.duckdb("bronze.people", "SELECT count(*) FROM (DESCRIBE SELECT * FROM {t}) WHERE column_name = 'city'");
    assert_eq!(single_i64(&columns), 0);
}

#[test]
fn fail_stops_the_source_naming_file_and_columns() {
    let scratch = scratch_with("fail");
    let before = scratch.duckdb("bronze.people", "SELECT count(*) FROM {t}");
    let run = scratch.inlet(&["run", "--output", "json"]);
    assert_eq!(run.code, Some(1), "a user decision is needed: {}", run.stderr);
    let error = run.source("people")["error"]["message"].as_str().unwrap().to_owned();
    assert!(error.contains("2.csv") && error.contains("city") && error.contains("zip"), "{error}");
    assert_eq!(run.source("people")["commits"].as_array().unwrap().len(), 0);
    assert_eq!(scratch.duckdb("bronze.people", "SELECT count(*) FROM {t}"), before, "nothing committed");

    // After the user decides, the same file goes in once.
    let toml = std::fs::read_to_string(scratch.path("inlet.toml")).unwrap().replace("\"fail\"", "\"add\"");
    scratch.pipeline(&toml);
    scratch.run_ok();
    assert_eq!(single_i64(&scratch.duckdb("bronze.people", "SELECT count(*) FROM {t}")), 4);
}

#[test]
fn ignore_drops_unknown_columns() {
    let scratch = scratch_with("ignore");
    scratch.run_ok();
    let columns = scratch.duckdb(
        "bronze.people",
        "SELECT column_name FROM (DESCRIBE SELECT * FROM {t}) WHERE column_name NOT LIKE '\\_%' ESCAPE '\\'",
    );
    assert_eq!(columns, vec![vec![serde_json::json!("id")], vec![serde_json::json!("name")]]);
    assert_eq!(single_i64(&scratch.duckdb("bronze.people", "SELECT count(*) FROM {t}")), 4);
}

#[test]
fn small_files_share_parquet_files_even_across_a_new_column() {
    let scratch = Scratch::new();
    scratch.pipeline(
        "[pipeline]\nname = \"small\"\n\n[sources.o]\ntype = \"files\"\npath = \"landing\"\nformat = \"csv\"\ntarget = \"bronze.o\"\non_new_columns = \"add\"\n",
    );
    // 40 small files, the last 20 with a column more, ten with a bad row, and one too big to
    // share.
    for file in 0..40 {
        let (header, extra) = if file < 20 { ("n,tag", String::new()) } else { ("n,tag,note", ",x".to_owned()) };
        let mut rows: String = (0..50).map(|r| format!("{r},f{file}{extra}\n")).collect();
        if (10..20).contains(&file) {
            rows.push_str(&format!("oops,f{file}\n"));
        }
        scratch.write(&format!("landing/s{file:02}.csv"), format!("{header}\n{rows}"));
    }
    let big: String = (0..400_000).map(|r| format!("{r},big\n")).collect();
    scratch.write("landing/t-big.csv", format!("n,tag\n{big}"));

    let run = scratch.run_ok();
    assert_eq!(run.source("o")["files_ingested"], 41);
    let log = std::fs::read_to_string(scratch.path("lake/bronze/o/_delta_log/00000000000000000000.json")).unwrap();
    let adds = log.lines().filter(|l| l.starts_with("{\"add\"")).count();
    // One file per schema for the small ones, the big one's own (however its writer splits it).
    assert!((3..=6).contains(&adds), "{adds} data files for 41 landing files:\n{log}");
    let counts = scratch.duckdb(
        "bronze.o",
        "SELECT count(*), count(DISTINCT (_source_file, _source_row)), count(note), count(DISTINCT _source_file) FROM {t}",
    );
    let counts: Vec<i64> = counts[0].iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(counts, [402_000, 402_000, 1000, 41]);
    // Their bad rows share a quarantine file too.
    let log = std::fs::read_to_string(scratch.path("lake/bronze/o__quarantine/_delta_log/00000000000000000000.json"))
        .unwrap();
    assert_eq!(log.lines().filter(|l| l.starts_with("{\"add\"")).count(), 1, "{log}");
    assert_eq!(scratch.rows_and_distinct("bronze.o__quarantine", "_source_file"), (10, 10));
}
