//! `deletion_vectors = true`, turned on for a table that exists (in a commit of its own): a
//! merge marks the rows it updates or deletes in deletion vectors instead of rewriting their
//! files; a later merge adds to a file's vector; a file whose every row is deleted is
//! removed; `inlet optimize` purges the vectors. After every step DuckDB reads the rows
//! inlet's model says, a downstream table computed by inlet agrees, and (under the test
//! command) Spark, Trino and ClickHouse read the table as inlet does.

use std::collections::BTreeMap;
use std::path::Path;

use inlet_tests::{Scratch, readers};
use serde_json::Value;

const PIPELINE: &str = r#"[pipeline]
name = "dv"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
schema = { id = "bigint", amount = "int" }

[tables."silver.orders"]
sql = "SELECT id, status, amount FROM bronze.orders"
write = "merge"
keys = ["id"]
delete_when = "status = 'cancelled'"
incremental = true
deletion_vectors = true
change_data_feed = true

[tables."gold.by_status"]
sql = "SELECT status, COUNT(*) AS n, SUM(amount) AS amount FROM silver.orders GROUP BY status"
write = "overwrite"
"#;

/// What silver should hold: id to (status, amount).
type Model = BTreeMap<i64, (String, i64)>;

/// Lands `rows` as one CSV file and applies them to `model` as the merge does.
fn land(scratch: &Scratch, name: &str, rows: &[(i64, &str, i64)], model: &mut Model) {
    let mut csv = String::from("id,status,amount\n");
    for (id, status, amount) in rows {
        csv.push_str(&format!("{id},{status},{amount}\n"));
        if *status == "cancelled" {
            model.remove(id);
        } else {
            model.insert(*id, ((*status).to_owned(), *amount));
        }
    }
    scratch.write(&format!("landing/{name}.csv"), csv);
}

/// silver's rows by DuckDB and gold's counts by inlet both match the model.
fn check(scratch: &Scratch, model: &Model) {
    check_silver(scratch, model);
    let mut by_status: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (status, amount) in model.values() {
        let entry = by_status.entry(status.clone()).or_default();
        entry.0 += 1;
        entry.1 += amount;
    }
    let gold = scratch.duckdb("gold.by_status", "SELECT status, n, amount FROM {t} ORDER BY status");
    let gold: BTreeMap<String, (i64, i64)> = gold
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_owned(), (r[1].as_i64().unwrap(), r[2].as_i64().unwrap())))
        .collect();
    assert_eq!(gold, by_status, "gold, computed by inlet from silver");
}

/// silver's rows by DuckDB match the model.
fn check_silver(scratch: &Scratch, model: &Model) {
    let rows = scratch.duckdb("silver.orders", "SELECT id, status, amount FROM {t} ORDER BY id");
    let read: Vec<(i64, String, i64)> = rows
        .iter()
        .map(|r| (r[0].as_i64().unwrap(), r[1].as_str().unwrap().to_owned(), r[2].as_i64().unwrap()))
        .collect();
    let expected: Vec<(i64, String, i64)> = model.iter().map(|(id, (s, a))| (*id, s.clone(), *a)).collect();
    assert_eq!(read.len(), expected.len(), "silver's row count");
    assert!(read == expected, "silver's rows differ from the model");
}

/// The table's latest version.
fn latest_version(table: &Path) -> u64 {
    std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json")?.parse::<u64>().ok())
        .max()
        .unwrap()
}

/// The actions of the table's latest commit.
fn latest_commit(table: &Path) -> Vec<Value> {
    let log = table.join("_delta_log");
    let latest = latest_version(table);
    let text = std::fs::read_to_string(log.join(format!("{latest:020}.json"))).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `(path, deletion vector cardinality)` of the commit's adds or removes.
fn files(actions: &[Value], kind: &str) -> Vec<(String, Option<i64>)> {
    let mut files: Vec<(String, Option<i64>)> = actions
        .iter()
        .filter_map(|a| a.get(kind))
        .map(|f| (f["path"].as_str().unwrap().to_owned(), f["deletionVector"]["cardinality"].as_i64()))
        .collect();
    files.sort();
    files
}

/// Every engine of the reader service reads silver as inlet does.
fn readers_agree(scratch: &Scratch) {
    if let Some(address) = readers::service() {
        let checked = scratch.check_table_readers(&address, "silver.orders", &scratch.path("lake/silver/orders"), None);
        let mut agreed = checked.agreed.clone();
        agreed.sort();
        assert_eq!(agreed, ["clickhouse", "duckdb", "spark", "trino"], "silver.orders: {checked:?}");
    }
}

#[test]
fn merges_mark_deleted_rows_in_deletion_vectors_that_every_reader_applies_and_optimize_purges() {
    let scratch = Scratch::new();
    // silver is created without deletion vectors; the setting turns them on later.
    scratch.pipeline(&PIPELINE.replace("deletion_vectors = true\n", ""));
    let silver = scratch.path("lake/silver/orders");
    let mut model = Model::new();

    // Two files of new orders, in two runs: silver has two data files.
    let first: Vec<(i64, &str, i64)> = (1..=2000).map(|id| (id, "new", id)).collect();
    land(&scratch, "a", &first, &mut model);
    scratch.run_ok();
    let created = std::fs::read_to_string(silver.join("_delta_log/00000000000000000000.json")).unwrap();
    assert!(!created.contains("deletionVectors"), "{created}");
    scratch.pipeline(PIPELINE);
    let second: Vec<(i64, &str, i64)> = (2001..=4000).map(|id| (id, "new", id)).collect();
    land(&scratch, "b", &second, &mut model);
    scratch.run_ok();
    // Turned on in a commit of its own (version 1), before the run's merge (version 2).
    let enabled = std::fs::read_to_string(silver.join("_delta_log/00000000000000000001.json")).unwrap();
    assert!(enabled.contains(r#""readerFeatures":["deletionVectors"]"#), "{enabled}");
    assert!(enabled.contains(r#""delta.enableDeletionVectors":"true""#), "{enabled}");
    assert!(!enabled.contains(r#""add""#), "{enabled}");
    assert_eq!(latest_version(&silver), 2);
    assert_eq!(files(&latest_commit(&silver), "add").len(), 1, "the second run's file");
    check(&scratch, &model);

    // Updates (ids 5, 10 … 100, all in the first file), three cancellations (one in the first
    // file, two in the second) and ten new orders.
    let mut changes: Vec<(i64, &str, i64)> = (1..=20).map(|i| (i * 5, "paid", i * 5 + 1)).collect();
    changes.extend([(7, "cancelled", 0), (2500, "cancelled", 0), (3999, "cancelled", 0)]);
    changes.extend((4001..=4010).map(|id| (id, "new", id)));
    land(&scratch, "c", &changes, &mut model);
    scratch.run_ok();
    let commit = latest_commit(&silver);
    let added = files(&commit, "add");
    let removed = files(&commit, "remove");
    // Both old files stay, each with its vector: 21 rows of the first, 2 of the second.
    let marked: Vec<Option<i64>> = added.iter().filter(|(_, dv)| dv.is_some()).map(|(_, dv)| *dv).collect();
    let mut marked = marked;
    marked.sort();
    assert_eq!(marked, [Some(2), Some(21)], "{added:?}");
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(removed.iter().all(|(path, dv)| dv.is_none() && added.iter().any(|(p, _)| p == path)), "{removed:?}");
    // New files hold the 20 updated rows and the 10 new ones; nothing is rewritten.
    let written: Vec<String> = added.iter().filter(|(_, dv)| dv.is_none()).map(|(p, _)| p.clone()).collect();
    assert!(!written.is_empty() && written.iter().all(|p| !removed.iter().any(|(r, _)| r == p)), "{added:?}");
    let new_rows: u64 = commit
        .iter()
        .filter(|a| a["add"].is_object() && a["add"]["deletionVector"].is_null())
        .map(|a| {
            serde_json::from_str::<Value>(a["add"]["stats"].as_str().unwrap()).unwrap()["numRecords"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(new_rows, 30, "{commit:?}");
    let vectors = std::fs::read_dir(&silver)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("deletion_vector_"))
        .count();
    assert_eq!(vectors, 1, "one deletion vector file for the commit");
    let stats: Value = serde_json::from_str(
        commit.iter().find_map(|a| a["add"]["deletionVector"].as_object().map(|_| a)).unwrap()["add"]["stats"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stats["tightBounds"], false, "{stats}");
    // The change data of the commit, as without deletion vectors.
    let cdc: Vec<String> = commit
        .iter()
        .filter_map(|a| a["cdc"]["path"].as_str())
        .map(|p| format!("'{}'", silver.join(p).display()))
        .collect();
    assert!(!cdc.is_empty(), "{commit:?}");
    let changes = inlet_tests::duckdb(&format!(
        "SELECT _change_type, count(*) FROM read_parquet([{}]) GROUP BY ALL ORDER BY 1",
        cdc.join(", ")
    ));
    let changes: Vec<(String, i64)> =
        changes.iter().map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_i64().unwrap())).collect();
    let expected = [("delete", 3), ("insert", 10), ("update_postimage", 20), ("update_preimage", 20)];
    assert_eq!(changes, expected.map(|(t, n)| (t.to_owned(), n)), "change data");
    check(&scratch, &model);
    readers_agree(&scratch);
    let (marked_version, marked_model) = (latest_version(&silver), model.clone());

    // Every row of the new files cancelled, and one more row of the first file: the new files
    // are removed outright, the first file's vector grows from 21 to 22.
    let mut cancels: Vec<(i64, &str, i64)> = (1..=20).map(|i| (i * 5, "cancelled", 0)).collect();
    cancels.extend((4001..=4010).map(|id| (id, "cancelled", 0)));
    cancels.push((11, "cancelled", 0));
    land(&scratch, "d", &cancels, &mut model);
    scratch.run_ok();
    let commit = latest_commit(&silver);
    let added = files(&commit, "add");
    let removed = files(&commit, "remove");
    assert_eq!(added.iter().map(|(_, dv)| *dv).collect::<Vec<_>>(), [Some(22)], "{added:?}");
    assert!(written.iter().all(|p| removed.contains(&(p.clone(), None))), "{removed:?}");
    assert!(removed.contains(&(added[0].0.clone(), Some(21))), "{removed:?}");
    check(&scratch, &model);
    readers_agree(&scratch);

    // Restore to the version before, and forward again: each file comes back with the
    // deletion vector it had then.
    let latest = latest_version(&silver);
    for (version, model) in [(marked_version, &marked_model), (latest, &model)] {
        let restored = scratch.inlet(&["restore", "silver.orders", "--version", &version.to_string()]);
        assert_eq!(restored.code, Some(0), "{}", restored.stderr);
        check_silver(&scratch, model);
    }

    // Optimize rewrites both files with vectors (even alone) without their deleted rows.
    let optimized = scratch.inlet(&["optimize", "silver.orders", "--output", "json"]);
    assert_eq!(optimized.code, Some(0), "{}", optimized.stderr);
    let commit = latest_commit(&silver);
    let added = files(&commit, "add");
    let removed = files(&commit, "remove");
    assert!(!added.is_empty() && added.iter().all(|(_, dv)| dv.is_none()), "{added:?}");
    let mut purged: Vec<Option<i64>> = removed.iter().map(|(_, dv)| *dv).collect();
    purged.sort();
    assert_eq!(purged, [Some(2), Some(22)], "{removed:?}");
    check(&scratch, &model);
    readers_agree(&scratch);

    // Merging on after the purge.
    land(&scratch, "e", &[(12, "paid", 13), (4020, "new", 4020)], &mut model);
    scratch.run_ok();
    check(&scratch, &model);
}

/// A partitioned table whose partition values are escaped in its paths (a space, a colon):
/// rows marked in files of both partitions, read by every engine (when the scratch lake is
/// dropped), then purged.
#[test]
fn deletion_vectors_in_partitions_whose_paths_are_escaped() {
    let scratch = Scratch::new();
    // The first test's pipeline, partitioned by region, without change data or gold.
    let pipeline = PIPELINE.split("[tables.\"gold").next().unwrap();
    scratch.pipeline(
        &pipeline
            .replace("SELECT id, status, amount", "SELECT id, region, status, amount")
            .replace("change_data_feed = true\n", "partition_by = [\"region\"]\n"),
    );
    let regions = ["us east", "eu:west"];
    let mut csv = String::from("id,region,status,amount\n");
    for id in 1..=600 {
        csv.push_str(&format!("{id},{},new,{id}\n", regions[(id % 2) as usize]));
    }
    scratch.write("landing/a.csv", csv);
    scratch.run_ok();
    let mut changes = String::from("id,region,status,amount\n");
    for id in [10, 11, 200, 201] {
        changes.push_str(&format!("{id},{},paid,{}\n", regions[(id % 2) as usize], id * 10));
    }
    for id in [12, 13] {
        changes.push_str(&format!("{id},{},cancelled,0\n", regions[(id % 2) as usize]));
    }
    scratch.write("landing/b.csv", changes);
    scratch.run_ok();
    let silver = scratch.path("lake/silver/orders");
    let added = files(&latest_commit(&silver), "add");
    let mut marked: Vec<Option<i64>> = added.iter().filter(|(_, dv)| dv.is_some()).map(|(_, dv)| *dv).collect();
    marked.sort();
    assert_eq!(marked, [Some(3), Some(3)], "{added:?}");
    let summary = |scratch: &Scratch| {
        scratch.duckdb(
            "silver.orders",
            "SELECT count(*), sum(amount), count(*) FILTER (WHERE status = 'paid'), count(DISTINCT region) FROM {t}",
        )[0]
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect::<Vec<_>>()
    };
    let total: i64 = (1..=600).sum::<i64>() - [10, 11, 200, 201, 12, 13].iter().sum::<i64>()
        + [100, 110, 2000, 2010].iter().sum::<i64>();
    assert_eq!(summary(&scratch), [598, total, 4, 2]);
    let optimized = scratch.inlet(&["optimize", "silver.orders", "--output", "json"]);
    assert_eq!(optimized.code, Some(0), "{}", optimized.stderr);
    let removed = files(&latest_commit(&silver), "remove");
    assert!(removed.iter().filter(|(_, dv)| dv.is_some()).count() == 2, "{removed:?}");
    assert_eq!(summary(&scratch), [598, total, 4, 2]);
}

/// `scd2` with deletion vectors keeps exactly the history the rewrite does: two tables over
/// the same daily snapshots, one of each, compared row for row after every day (and after
/// `optimize` purges the vectors); every engine reads both when the lake is dropped.
#[test]
fn scd2_with_deletion_vectors_keeps_the_history_a_rewrite_keeps() {
    let scratch = Scratch::new();
    let history = |name: &str, extra: &str| {
        format!(
            "[tables.\"silver.{name}\"]\nsql = \"SELECT id, tier, city, snapshot_at FROM bronze.customers\"\nwrite = \"scd2\"\nkeys = [\"id\"]\nsequence_by = \"snapshot_at\"\nsource_is_snapshot = true\nincremental = true\n{extra}\n"
        )
    };
    scratch.pipeline(&format!(
        "[pipeline]\nname = \"dv-scd2\"\n\n[sources.customers]\ntype = \"files\"\npath = \"landing\"\nformat = \"csv\"\ntarget = \"bronze.customers\"\nschema = {{ id = \"bigint\", snapshot_at = \"timestamp\" }}\n\n{}\n{}",
        history("rewritten", ""),
        history("marked", "deletion_vectors = true"),
    ));
    // Day d: ids 1..=1500 + 10d; every 7th id (by d) changes tier, every 50th is left out.
    let snapshot = |day: i64| {
        let mut csv = String::from("id,tier,city,snapshot_at\n");
        for id in 1..=1500 + 10 * day {
            if day > 0 && (id + day) % 50 == 0 {
                continue;
            }
            let tier = if (id + day) % 7 == 0 { format!("gold{day}") } else { "silver".to_owned() };
            csv.push_str(&format!("{id},{tier},city {},2024-05-{:02}T00:00:00Z\n", id % 13, day + 1));
        }
        csv
    };
    let same = |scratch: &Scratch| {
        let (a, b) = (scratch.table("silver.rewritten"), scratch.table("silver.marked"));
        let differ = inlet_tests::duckdb(&format!(
            "SELECT (SELECT count(*) FROM (SELECT * FROM delta_scan('{a}') EXCEPT ALL SELECT * FROM delta_scan('{b}'))) + (SELECT count(*) FROM (SELECT * FROM delta_scan('{b}') EXCEPT ALL SELECT * FROM delta_scan('{a}'))), (SELECT count(*) FROM delta_scan('{b}')), (SELECT count(*) FILTER (WHERE _is_current) FROM delta_scan('{b}'))"
        ));
        differ[0].iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>()
    };
    let mut marked_commits = 0;
    for day in 0..4 {
        scratch.write(&format!("landing/day{day}.csv"), snapshot(day));
        scratch.run_ok();
        let state = same(&scratch);
        assert_eq!(state[0], 0, "day {day}: the two histories differ: {state:?}");
        assert!(state[1] >= 1500, "day {day}: {state:?}");
        let commit = latest_commit(&scratch.path("lake/silver/marked"));
        if files(&commit, "add").iter().any(|(_, dv)| dv.is_some()) {
            marked_commits += 1;
        }
    }
    assert_eq!(marked_commits, 3, "days 1 to 3 mark rows in deletion vectors");
    let optimized = scratch.inlet(&["optimize", "silver.marked", "--output", "json"]);
    assert_eq!(optimized.code, Some(0), "{}", optimized.stderr);
    let commit = latest_commit(&scratch.path("lake/silver/marked"));
    assert!(files(&commit, "add").iter().all(|(_, dv)| dv.is_none()), "{commit:?}");
    assert_eq!(same(&scratch)[0], 0, "after optimize");
}
