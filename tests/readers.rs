//! Every table a test wrote, read by other engines: DuckDB, Spark with Delta Lake, Trino and
//! ClickHouse (chDB), through the reader service `scripts/test.sh` starts once per run
//! (`tests/readers/server.py`, at `INLET_READERS`). Each engine's full sorted rows must be
//! what inlet itself reports (`inlet query ... --output parquet`).
//!
//! A [`Scratch`](crate::Scratch) checks its lake when dropped at the end of a passing test.
//! What an engine cannot read is named in [`LIMITS`] and printed; any other error, and any
//! difference in the rows, fails the test.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// What an engine cannot read, recognised by its error: (engine, error text, the feature).
pub const LIMITS: &[(&str, &str, &str)] = &[
    (
        "clickhouse",
        "Reading from files with different schema is not possible",
        "a table whose data files have different columns (columns added by schema evolution)",
    ),
    ("duckdb", "time travel", "time travel (delta_scan reads the latest version)"),
    ("clickhouse", "time travel", "time travel (deltaLakeLocal reads the latest version)"),
];

/// The reader service's address, or `None` when the tests run without it (outside
/// `scripts/test.sh`, which sets `INLET_REQUIRE_SERVICES` and starts it).
pub fn service() -> Option<String> {
    match std::env::var("INLET_READERS") {
        Ok(address) if !address.is_empty() => Some(address),
        _ if std::env::var_os("INLET_REQUIRE_SERVICES").is_some() => {
            panic!("no reader service (INLET_READERS): scripts/test.sh starts Spark, Trino and chDB behind it")
        }
        _ => None,
    }
}

/// The Delta tables under `lake`, as `<layer>.<name>` with their directories.
pub fn tables_under(lake: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let Ok(layers) = std::fs::read_dir(lake) else { return found };
    for layer in layers.flatten().filter(|e| e.path().is_dir()) {
        let Ok(tables) = std::fs::read_dir(layer.path()) else { continue };
        for table in tables.flatten() {
            let path = table.path();
            // A table once a commit file is in its log (not a writer's temporary file).
            let committed = std::fs::read_dir(path.join("_delta_log")).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json") && n.starts_with('0')))
            });
            if committed {
                let name = format!("{}.{}", layer.file_name().to_string_lossy(), table.file_name().to_string_lossy());
                found.push((name, path));
            }
        }
    }
    found.sort();
    found
}

/// What the engines made of one table.
#[derive(Debug, Default)]
pub struct Checked {
    /// Engines whose rows were inlet's.
    pub agreed: Vec<String>,
    /// (engine, feature) an engine cannot read, from [`LIMITS`].
    pub limits: Vec<(String, String)>,
}

/// Reads `table` (`<layer>.<name>`, at `location`: a local path or an `s3://` URL on the
/// test server) with every engine, at `version` or the latest, and compares each with
/// inlet's own rows: `reference` is a Parquet file of them. Panics naming the table, the
/// engine and the rows that differ.
pub fn check(address: &str, table: &str, location: &str, version: Option<i64>, reference: &Path) -> Checked {
    let request = json!({
        "path": location,
        "version": version,
        "reference": reference.display().to_string(),
    });
    let (status, body) = crate::http("POST", &format!("http://{address}/read"), Some(request.to_string()));
    assert_eq!(status, 200, "reader service on {table}: {body}");
    let response: Value = serde_json::from_str(&body).unwrap();
    let mut at = version.map_or_else(|| "latest".to_owned(), |v| format!("version {v}"));
    if response["summary"] == true {
        at.push_str(", compared by rows and per-column count, min and max");
    }
    let mut checked = Checked::default();
    for (engine, result) in response["engines"].as_object().unwrap() {
        if let Some(rows) = result["rows"].as_array() {
            let wanted = if result["millis"] == true { &response["reference_millis"] } else { &response["reference"] };
            let wanted = wanted.as_array().unwrap();
            if rows != wanted {
                let only =
                    |a: &[Value], b: &[Value]| a.iter().filter(|r| !b.contains(r)).take(3).cloned().collect::<Vec<_>>();
                panic!(
                    "{engine} reads `{table}` ({at}) otherwise than inlet: {} rows against {}\n{engine} only: {:?}\ninlet only: {:?}",
                    rows.len(),
                    wanted.len(),
                    only(rows, wanted),
                    only(wanted, rows)
                );
            }
            checked.agreed.push(engine.clone());
            continue;
        }
        let error =
            result["error"].as_str().or_else(|| result["unsupported"].as_str()).unwrap_or("no rows and no error");
        match LIMITS.iter().find(|(e, text, _)| e == engine && error.contains(text)) {
            Some((_, _, feature)) => {
                eprintln!("readers: {engine} cannot read `{table}` ({at}): {feature}");
                checked.limits.push((engine.clone(), (*feature).to_owned()));
            }
            None => panic!("{engine} cannot read `{table}` ({at}): {error}"),
        }
    }
    checked
}

/// Runs SQL in Spark or Trino through the reader service, after registering `tables` (name
/// to path; Trino's SQL names them `delta.inlet.{name}`). The rows, every value as canonical text.
pub fn sql(address: &str, engine: &str, sql: &str, tables: &[(&str, &Path)]) -> Vec<Vec<Value>> {
    sql_with_columns(address, engine, sql, tables).1
}

/// [`sql`] with the result's column names.
pub fn sql_with_columns(
    address: &str,
    engine: &str,
    sql: &str,
    tables: &[(&str, &Path)],
) -> (Vec<String>, Vec<Vec<Value>>) {
    let tables: serde_json::Map<String, Value> =
        tables.iter().map(|(name, path)| ((*name).to_owned(), Value::String(path.display().to_string()))).collect();
    let request = json!({"engine": engine, "sql": sql, "tables": tables});
    let (status, body) = crate::http("POST", &format!("http://{address}/sql"), Some(request.to_string()));
    assert_eq!(status, 200, "reader service: {body}");
    let response: Value = serde_json::from_str(&body).unwrap();
    if let Some(error) = response["error"].as_str() {
        panic!("{engine} failed on `{sql}`: {error}");
    }
    let columns = response["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    (columns, response["rows"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().clone()).collect())
}
