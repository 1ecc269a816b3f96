//! The PostgreSQL source against a real PostgreSQL (`scripts/test.sh` starts one with
//! `wal_level = logical`): every type read back by DuckDB and compared with PostgreSQL's
//! own output, a full load killed repeatedly, incremental boundaries, and CDC kept in
//! silver by a merge, through kills, idleness and schema changes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use inlet_tests::{Pg, Scratch, inlet_bin, kill_runs, pg, single_i64};
use serde_json::Value;

fn pipeline(scratch: &Scratch, db: &Pg, source: &str, tables: &str) {
    scratch.pipeline(&format!(
        "[pipeline]\nname = \"pg\"\nlake = \"lake\"\n\n[sources.pg]\ntype = \"postgres\"\nurl = \"{}\"\n{source}\n{tables}",
        db.url
    ));
}

/// DuckDB's rows of `sql` over `table` (`t`), every value as text (`<NULL>` for NULL).
fn duck_text(scratch: &Scratch, table: &str, sql: &str) -> Vec<Vec<String>> {
    scratch
        .duckdb(table, sql)
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|v| match v {
                    Value::Null => "<NULL>".to_owned(),
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect()
        })
        .collect()
}

#[test]
fn every_type_reads_back_as_postgres_prints_it() {
    let Some(db) = pg("pg_types") else { return };
    db.sql(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
         CREATE TABLE kinds (id int PRIMARY KEY, amount numeric(12,2), big numeric, note text, at timestamptz,
           local timestamp, d date, t time, tz timetz, iv interval, ok bool, u uuid, j json, jb jsonb, arr int[],
           tarr text[], b bytea, m mood, p posint, ip inet, c cidr, mac macaddr, cash money, f4 real,
           f8 double precision, s smallint, i8 bigint, ch char(3), vc varchar(10));
         INSERT INTO kinds VALUES
           (1, -1234.5, 123456789012345678901234567890.123456789, 'héllo | \"quoted\"', '2024-02-29 23:59:59.123456+00',
            '1999-12-31 23:00:00', '1970-01-01', '13:05:07.25', '10:00:00+05:30', '-1 months -1.5 seconds', true,
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', '{\"b\": 1}', '{1,NULL,3}', '{x,\"y,z\"}',
            '\\xdeadbeef', 'happy', 5, '2001:db8::1', '10.0.0.0/8', '08:00:2b:01:02:03', -12.34, 1.5, 2.25, -7,
            9007199254740993, 'ab', 'short'),
           (2, 0, 0, '', '1900-01-01 00:00:00+00', '2100-06-01 12:00:00.5', '2500-12-31', '00:00:00', '23:59:59-08',
            '1 year 2 months 3 days 04:05:06', false, '00000000-0000-0000-0000-000000000000', '[]', '[]', '{}', '{}',
            '\\x', 'sad', 1, '192.168.0.1/24', '192.168.0.0/24', 'ff:ff:ff:ff:ff:ff', 0, 0.25, 0.125, 0, 0, 'abc', ''),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (4, 1, 1, 'infinite', NULL, NULL, 'infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    );
    let scratch = Scratch::new();
    pipeline(&scratch, &db, "tables = [\"kinds\"]\ntarget_prefix = \"bronze.pg_\"\nmode = \"full\"", "");
    let run = scratch.run_ok();
    let source = run.source("pg");
    assert_eq!((source["rows"].as_i64(), source["quarantined"].as_i64()), (Some(3), Some(1)), "{source}");
    // PostgreSQL's own text, and DuckDB's of bronze, column by column.
    let pairs: &[(&str, &str)] = &[
        ("amount::text", "amount::varchar"),
        ("big::text", "big"),
        ("note", "note"),
        ("to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')", "strftime(\"at\", '%Y-%m-%d %H:%M:%S.%f')"),
        ("to_char(local, 'YYYY-MM-DD HH24:MI:SS.US')", "strftime(\"local\", '%Y-%m-%d %H:%M:%S.%f')"),
        ("d::text", "d::varchar"),
        ("t::text", "t"),
        ("tz::text", "tz"),
        ("iv::text", "iv"),
        ("ok::text", "ok::varchar"),
        ("u::text", "u"),
        ("j::text", "j"),
        ("jb::text", "jb"),
        ("to_json(arr)::text", "arr"),
        ("to_json(tarr)::text", "tarr"),
        ("encode(b, 'hex')", "lower(hex(b))"),
        ("m::text", "m"),
        ("p::text", "p::varchar"),
        ("ip", "ip"),
        ("c", "c"),
        ("mac::text", "mac"),
        ("cash::numeric::text", "cash"),
        ("f4::text", "f4::varchar"),
        ("f8::text", "f8::varchar"),
        ("s::text", "s::varchar"),
        ("i8::text", "i8::varchar"),
        ("ch", "ch"),
        ("vc", "vc"),
    ];
    let postgres: Vec<String> = pairs.iter().map(|(p, _)| *p).map(str::to_owned).collect();
    let duck: Vec<String> = pairs.iter().map(|(_, d)| *d).map(str::to_owned).collect();
    let expected = db.rows(&format!(
        "SET intervalstyle = iso_8601; SELECT id::text, {} FROM kinds WHERE id <> 4 ORDER BY kinds.id",
        postgres.join(", ")
    ));
    let found = duck_text(
        &scratch,
        "bronze.pg_kinds",
        &format!("SELECT id::varchar, {} FROM {{t}} ORDER BY id", duck.join(", ")),
    );
    assert_eq!(found.len(), expected.len());
    for (row, (got, want)) in found.iter().zip(&expected).enumerate() {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let column = if i == 0 { "id" } else { pairs[i - 1].0 };
            assert_eq!(g, w, "row {row}, `{column}`: DuckDB read `{g}`, PostgreSQL prints `{w}`");
        }
    }
    // The infinite date is in quarantine, naming its column.
    let quarantined = duck_text(&scratch, "bronze.pg_kinds__quarantine", "SELECT _error_message, _raw_record FROM {t}");
    assert_eq!(quarantined.len(), 1);
    assert!(quarantined[0][0].contains("column `d`") && quarantined[0][0].contains("infinity"), "{quarantined:?}");
    assert!(quarantined[0][1].contains("infinite"), "{quarantined:?}");
    // A type inlet does not read is refused up front, naming the column.
    db.sql("CREATE TABLE odd (id int PRIMARY KEY, span int4range)");
    pipeline(&scratch, &db, "tables = [\"odd\"]\ntarget_prefix = \"bronze.pg_\"", "");
    let run = scratch.inlet(&["run"]);
    assert_ne!(run.code, Some(0));
    assert!(run.stdout.contains("column `span`") && run.stdout.contains("int4range"), "{}", run.stdout);
    assert!(!run.stdout.contains("postgres@"), "the URL is not shown: {}", run.stdout);
    // A key with a NULL cannot be paged by: an error naming the column, nothing landed.
    pipeline(
        &scratch,
        &db,
        "query = \"SELECT id, note FROM kinds\"\ntarget = \"bronze.notes\"\nprimary_key = [\"note\"]\nrows_per_chunk = 1",
        "",
    );
    let run = scratch.inlet(&["run"]);
    assert_ne!(run.code, Some(0));
    assert!(run.stdout.contains("NULL in key column `note`"), "{}", run.stdout);
}

#[test]
fn a_full_load_killed_repeatedly_lands_every_row_once() {
    let Some(db) = pg("pg_full_kill") else { return };
    db.sql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer int, amount numeric(10,2), note text);
         INSERT INTO orders SELECT g, g % 1000, g * 0.01, 'order ' || g FROM generate_series(1, 1000000) g;
         CREATE TABLE nokey (a int, b text);
         INSERT INTO nokey SELECT g, 'x' FROM generate_series(1, 1000) g;",
    );
    let scratch = Scratch::new();
    pipeline(
        &scratch,
        &db,
        "tables = [\"orders\"]\ntarget_prefix = \"bronze.pg_\"\nrows_per_chunk = 50000\nmax_records_per_commit = 100000",
        "",
    );
    let count = || scratch.duckdb_or_zero("bronze.pg_orders", "SELECT count(*) FROM {t}");
    let kills = kill_runs(scratch.path("").as_path(), 3, 100..1500, 15, &count, 1_000_000);
    assert!(kills >= 1, "no run was killed mid-load");
    // Runs until the load is whole (a load that ended starts the next one).
    for _ in 0..3 {
        if count() >= 1_000_000 {
            break;
        }
        scratch.run_ok();
    }
    let (rows, distinct) = scratch.rows_and_distinct("bronze.pg_orders", "id");
    assert_eq!((rows, distinct), (1_000_000, 1_000_000), "every row once after {kills} kills");
    let sum = single_i64(&scratch.duckdb("bronze.pg_orders", "SELECT sum(id)::bigint FROM {t}"));
    assert_eq!(sum, 500_000_500_000);
    // A table without a key is read in one commit.
    pipeline(&scratch, &db, "tables = [\"nokey\"]\ntarget_prefix = \"bronze.pg_\"\nmax_records_per_commit = 10", "");
    let run = scratch.run_ok();
    assert_eq!(run.source("pg")["rows"].as_i64(), Some(1000));
    assert_eq!(run.source("pg")["commits"].as_array().map(Vec::len), Some(1), "{}", run.source("pg"));
}

/// The `snapshot` a table's first commit records for its load.
fn load_snapshot(table: &Path) -> String {
    let text = std::fs::read_to_string(table.join("_delta_log/00000000000000000000.json")).unwrap();
    let at = text.find("\"snapshot\":\"").unwrap_or_else(|| panic!("no load snapshot in {text}")) + 12;
    text[at..].split('"').next().unwrap().to_owned()
}

#[test]
fn a_full_load_of_several_tables_reads_one_snapshot() {
    let Some(db) = pg("pg_full_shared") else { return };
    db.sql(
        "CREATE TABLE pair_a (id bigint PRIMARY KEY, pad text); CREATE TABLE pair_b (id bigint PRIMARY KEY, pad text);
         INSERT INTO pair_a SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g;
         INSERT INTO pair_b SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g;",
    );
    let scratch = Scratch::new();
    pipeline(
        &scratch,
        &db,
        "tables = [\"pair_a\", \"public.pair_b\"]\ntarget_prefix = \"bronze.pg_\"\nrows_per_chunk = 5000\nmax_records_per_commit = 20000",
        "",
    );
    // A writer adds a row to both tables in each transaction while the load runs.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let run = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut n = 1_000_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                db.sql(&format!(
                    "BEGIN; INSERT INTO pair_a VALUES ({n}, 'w'); INSERT INTO pair_b VALUES ({n}, 'w'); COMMIT;"
                ));
                n += 1;
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        // One source at a time: the second table begins its load after the first is in.
        let run = scratch.inlet(&["run", "--jobs", "1", "--output", "json"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        run
    });
    let (a, b) = (scratch.path("lake/bronze/pg_pair_a"), scratch.path("lake/bronze/pg_pair_b"));
    assert_eq!(load_snapshot(&a), load_snapshot(&b), "both tables' loads record one snapshot");
    let written = |table: &str| {
        duck_text(&scratch, table, "SELECT count(*)::varchar, coalesce(max(id), 0)::varchar FROM {t} WHERE pad = 'w'")
    };
    let (in_a, in_b) = (written("bronze.pg_pair_a"), written("bronze.pg_pair_b"));
    assert_eq!(in_a, in_b, "the writer's transactions are in both tables or in neither");
    let total = run.source("pg.pair_a")["rows"].as_i64().unwrap();
    assert!(total >= 100_000, "{}", run.source("pg.pair_a"));
}

#[test]
fn incremental_runs_take_boundary_rows_once() {
    let Some(db) = pg("pg_incremental") else { return };
    db.sql(
        "CREATE TABLE events (id int PRIMARY KEY, updated_at timestamptz NOT NULL, v text);
         INSERT INTO events VALUES (1, '2024-01-01 10:00:00+00', 'a'), (2, '2024-01-01 11:00:00+00', 'b'),
           (3, '2024-01-01 11:00:00+00', 'c');",
    );
    let scratch = Scratch::new();
    pipeline(
        &scratch,
        &db,
        "tables = [\"events\"]\ntarget_prefix = \"bronze.pg_\"\nmode = \"incremental\"\ncursor_column = \"updated_at\"\nlag_secs = 60",
        "",
    );
    let landed = |scratch: &Scratch| {
        duck_text(scratch, "bronze.pg_events", "SELECT id::varchar, v FROM {t} ORDER BY id, v")
            .into_iter()
            .map(|r| format!("{}{}", r[0], r[1]))
            .collect::<Vec<_>>()
    };
    assert_eq!(scratch.run_ok().source("pg")["rows"].as_i64(), Some(3));
    // At the boundary: a new row with the mark's value, an update to it, and a row
    // committed late, 30 s before the mark (inside the lag).
    db.sql(
        "INSERT INTO events VALUES (4, '2024-01-01 11:00:00+00', 'd'), (5, '2024-01-01 10:59:30+00', 'late');
         UPDATE events SET v = 'a2', updated_at = '2024-01-01 11:00:00+00' WHERE id = 1;",
    );
    assert_eq!(scratch.run_ok().source("pg")["rows"].as_i64(), Some(3));
    assert_eq!(landed(&scratch), ["1a", "1a2", "2b", "3c", "4d", "5late"]);
    // Nothing new: nothing landed, no version made.
    let run = scratch.run_ok();
    assert_eq!(run.source("pg")["rows"].as_i64(), Some(0));
    db.sql("INSERT INTO events VALUES (6, '2024-01-02 00:00:00+00', 'e')");
    assert_eq!(scratch.run_ok().source("pg")["rows"].as_i64(), Some(1));
    assert_eq!(landed(&scratch).len(), 7);
}

/// A CDC source of `customers` and its silver: merged by key, latest by `_lsn`.
fn cdc_pipeline(scratch: &Scratch, db: &Pg, pipeline_extra: &str, source_extra: &str) {
    scratch.pipeline(&format!(
        r#"[pipeline]
name = "cdc"
lake = "lake"
{pipeline_extra}

[sources.pg]
type = "postgres"
url = "{}"
tables = ["public.customers"]
target_prefix = "bronze.pg_"
mode = "cdc"
slot = "inlet_{}"
{source_extra}

[tables."silver.customers"]
sql = "SELECT id, name, big, n, _lsn, _op, _unchanged_columns FROM bronze.pg_customers WHERE _op <> 'truncate'"
write = "merge"
keys = ["id"]
sequence_by = "_lsn"
delete_when = "_op = 'delete'"
incremental = true
"#,
        db.url, db.database
    ));
}

const CUSTOMERS: &str = "CREATE TABLE customers (id int PRIMARY KEY, name text, big text, n int);
     ALTER TABLE customers ALTER COLUMN big SET STORAGE EXTERNAL;
     INSERT INTO customers SELECT g, 'c' || g, repeat(md5(g::text), 320), g FROM generate_series(1, 200) g;";

/// Silver's rows as PostgreSQL would print the source's, in key order.
fn silver_rows(scratch: &Scratch) -> Vec<Vec<String>> {
    duck_text(scratch, "silver.customers", "SELECT id::varchar, name, md5(big), n::varchar FROM {t} ORDER BY id")
}

fn source_rows(db: &Pg) -> Vec<Vec<String>> {
    db.rows("SELECT id::text, name, md5(big), n::text FROM customers ORDER BY customers.id")
}

#[test]
fn cdc_keeps_silver_equal_to_the_source() {
    let Some(db) = pg("pg_cdc") else { return };
    db.sql(CUSTOMERS);
    let scratch = Scratch::new();
    cdc_pipeline(&scratch, &db, "", "");
    let run = scratch.run_ok();
    assert_eq!(run.source("pg")["rows"].as_i64(), Some(200), "the snapshot");
    assert_eq!(silver_rows(&scratch), source_rows(&db));
    // Several transactions: inserts, updates leaving the 10 KB TOASTed text alone, deletes,
    // a key changed twice in one transaction, one transaction larger than a page, and a
    // primary key changed (a delete of the old key and an update of the new one).
    db.sql(
        "INSERT INTO customers SELECT g, 'c' || g, repeat(md5(g::text), 320), g FROM generate_series(201, 250) g;
         UPDATE customers SET n = n + 1000 WHERE id <= 100;
         DELETE FROM customers WHERE id BETWEEN 180 AND 199;
         BEGIN; UPDATE customers SET name = 'first' WHERE id = 5; UPDATE customers SET name = 'second', n = 5 WHERE id = 5; COMMIT;
         BEGIN; INSERT INTO customers SELECT g, 'bulk', 'small', g FROM generate_series(1000, 41000) g;
                UPDATE customers SET big = 'now small' WHERE id = 7; COMMIT;
         UPDATE customers SET id = 50000 WHERE id = 1000;",
    );
    let run = scratch.run_ok();
    assert_eq!(run.source("pg")["rows"].as_i64(), Some(50 + 100 + 20 + 2 + 40_001 + 1 + 2), "{}", run.source("pg"));
    assert_eq!(silver_rows(&scratch), source_rows(&db), "silver after inserts, updates and deletes");
    // The unchanged TOASTed value is listed, never written as a value.
    let unchanged = duck_text(
        &scratch,
        "bronze.pg_customers",
        "SELECT count(*)::varchar, count(big)::varchar FROM {t} WHERE _op = 'update' AND _unchanged_columns = '[\"big\"]'",
    );
    assert_eq!(unchanged, [["102", "0"]], "100 updates of n and both of id 5");
    // Transactions are whole in a commit: every commit's rows of one `_xid` are all of it.
    let xids = duck_text(
        &scratch,
        "bronze.pg_customers",
        "SELECT count(DISTINCT _xid)::varchar FROM {t} WHERE _op <> 'snapshot'",
    );
    assert_eq!(xids, [["6"]]);
    // A truncate lands as a change without a row.
    db.sql("TRUNCATE customers; INSERT INTO customers VALUES (1, 'after', 'x', 1);");
    scratch.run_ok();
    let truncates = duck_text(
        &scratch,
        "bronze.pg_customers",
        "SELECT count(*)::varchar, count(id)::varchar FROM {t} WHERE _op = 'truncate'",
    );
    assert_eq!(truncates, [["1", "0"]]);
    // The slot was moved only to what the table holds.
    let run = scratch.run_ok();
    assert_eq!(run.source("pg")["rows"].as_i64(), Some(0), "nothing read twice");
    let (confirmed, _) = db.slot_lsn(&format!("inlet_{}", db.database)).unwrap();
    assert!(confirmed <= logged_lsn(&scratch.path("lake/bronze/pg_customers")), "the slot passed the log");
}

/// The highest LSN a commit of the table's log holds as its position.
fn logged_lsn(table: &Path) -> u64 {
    let mut best = 0;
    let Ok(entries) = std::fs::read_dir(table.join("_delta_log")) else { return 0 };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("\"stream\":{\"slot\":") {
            rest = &rest[at..];
            if let Some(lsn) = rest.find("\"lsn\":") {
                let digits: String = rest[lsn + 6..].chars().take_while(char::is_ascii_digit).collect();
                best = best.max(digits.parse().unwrap_or(0));
            }
            rest = &rest[1..];
        }
    }
    best
}

#[test]
fn cdc_under_serve_survives_kill_9_without_passing_the_log() {
    let Some(db) = pg("pg_cdc_kill") else { return };
    db.sql(CUSTOMERS);
    let scratch = Scratch::new();
    let port = inlet_tests::free_port();
    cdc_pipeline(
        &scratch,
        &db,
        &format!("\n[pipeline.serve]\nlisten = \"127.0.0.1:{port}\""),
        "poll_interval_ms = 200",
    );
    let serve = || {
        Command::new(inlet_bin())
            .args(["serve"])
            .current_dir(scratch.path(""))
            .env("INLET_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(scratch.path("serve.log")).unwrap())
            .spawn()
            .unwrap()
    };
    let mut server = serve();
    let slot = format!("inlet_{}", db.database);
    let table = scratch.path("lake/bronze/pg_customers");
    // Writes go on while serve streams, and while it is killed.
    let mut next = 1000;
    let deadline = Instant::now() + Duration::from_secs(60);
    while logged_lsn(&table) == 0 {
        assert!(
            Instant::now() < deadline,
            "serve landed nothing: {}",
            std::fs::read_to_string(scratch.path("serve.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for round in 0..3 {
        for _ in 0..15 {
            db.sql(&format!(
                "BEGIN; INSERT INTO customers SELECT g, 'w', 'v', g FROM generate_series({next}, {}) g;
                 UPDATE customers SET n = n + 1 WHERE id = {}; DELETE FROM customers WHERE id = {}; COMMIT;",
                next + 99,
                round + 1,
                next - 50
            ));
            next += 100;
            std::thread::sleep(Duration::from_millis(30));
        }
        server.kill().unwrap();
        server.wait().unwrap();
        let (confirmed, _) = db.slot_lsn(&slot).unwrap();
        assert!(confirmed <= logged_lsn(&table), "after kill {round}: the slot's confirmed LSN passed the table's log");
        db.sql(&format!("INSERT INTO customers VALUES ({next}, 'while down', 'v', 0)"));
        next += 100;
        server = serve();
    }
    // Caught up: silver equals the source.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if silver_rows(&scratch) == source_rows(&db) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "silver did not catch up: {}",
            std::fs::read_to_string(scratch.path("serve.log")).unwrap()
        );
    }
    // The slot's lag and retained WAL are metrics of the source, and the dashboard's node of
    // the source shows them. Serve sets both when the source's run ends: the rows can be
    // committed a moment before.
    let names =
        ["inlet_replication_lag_bytes", "inlet_replication_lag_seconds", "inlet_replication_retained_wal_bytes"];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, metrics) = inlet_tests::http("GET", &format!("http://127.0.0.1:{port}/metrics"), None);
        assert_eq!(status, 200);
        let missing: Vec<&str> =
            names.iter().copied().filter(|name| !metrics.contains(&format!("{name}{{source=\"pg\"}}"))).collect();
        let (status, pipeline) = inlet_tests::http("GET", &format!("http://127.0.0.1:{port}/api/pipeline"), None);
        assert_eq!(status, 200, "{pipeline}");
        let pipeline: serde_json::Value = serde_json::from_str(&pipeline).unwrap();
        let node = pipeline["nodes"].as_array().unwrap().iter().find(|n| n["kind"] == "source").unwrap().clone();
        let node_lag = node["lag"]["bytes"].is_u64() && node["lag"]["retained_bytes"].is_u64();
        if missing.is_empty() && node_lag {
            break;
        }
        assert!(Instant::now() < deadline, "no {missing:?} in:\n{metrics}\nor no lag on the node: {node}");
        std::thread::sleep(Duration::from_millis(500));
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let (confirmed, _) = db.slot_lsn(&slot).unwrap();
    assert!(confirmed <= logged_lsn(&table));
}

#[test]
fn an_idle_table_does_not_pin_the_wal() {
    let Some(db) = pg("pg_cdc_idle") else { return };
    db.sql(&format!("{CUSTOMERS} CREATE TABLE noise (id serial PRIMARY KEY, payload text);"));
    let scratch = Scratch::new();
    cdc_pipeline(&scratch, &db, "", "idle_advance_bytes = 1048576");
    scratch.run_ok();
    let slot = format!("inlet_{}", db.database);
    let (_, restart_before) = db.slot_lsn(&slot).unwrap();
    let start = db.current_wal_lsn();
    let mut behind = 0;
    let mut round_wal = 0;
    // Another table writes WAL for a while; the source's table is idle.
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let before = db.current_wal_lsn();
        db.sql("INSERT INTO noise (payload) SELECT repeat(md5(random()::text), 30) FROM generate_series(1, 2000)");
        round_wal = round_wal.max(db.current_wal_lsn() - before);
        scratch.run_ok();
        let (confirmed, _) = db.slot_lsn(&slot).unwrap();
        behind = behind.max(db.current_wal_lsn() - confirmed);
    }
    let written = db.current_wal_lsn() - start;
    let (_, restart_after) = db.slot_lsn(&slot).unwrap();
    assert!(written > 20 << 20, "the test wrote only {written} bytes of WAL");
    // The slot keeps up with the WAL: a run moves it to the position the run before
    // committed, so it stays a few rounds behind (the other tests write WAL meanwhile too),
    // never the whole of it; and what it retains moves on (PostgreSQL moves `restart_lsn`
    // at its next running-transactions record, every 15 s).
    assert!(
        behind < written / 3,
        "the slot fell {behind} bytes behind ({round_wal} a round) while {written} were written"
    );
    assert!(
        restart_after - restart_before > written / 3,
        "retained WAL was not let go: restart moved {} of {written}",
        restart_after - restart_before
    );
}

#[test]
fn cdc_follows_an_added_column_and_stops_on_a_dropped_one() {
    let Some(db) = pg("pg_cdc_schema") else { return };
    db.sql(CUSTOMERS);
    let scratch = Scratch::new();
    cdc_pipeline(&scratch, &db, "", "");
    scratch.run_ok();
    db.sql(
        "INSERT INTO customers VALUES (300, 'before', 'b', 1);
            ALTER TABLE customers ADD COLUMN tier text;
            INSERT INTO customers VALUES (301, 'after', 'b', 1, 'gold');",
    );
    scratch.run_ok();
    let tiers =
        duck_text(&scratch, "bronze.pg_customers", "SELECT id::varchar, tier FROM {t} WHERE id >= 300 ORDER BY id");
    assert_eq!(tiers, [["300", "<NULL>"], ["301", "gold"]]);
    db.sql("ALTER TABLE customers DROP COLUMN n; INSERT INTO customers VALUES (302, 'x', 'b', 'silver');");
    let run = scratch.inlet(&["run"]);
    assert_ne!(run.code, Some(0));
    assert!(run.stdout.contains("column `n`") && run.stdout.contains("public.customers"), "{}", run.stdout);
}

#[test]
fn a_table_without_a_key_is_refused_for_cdc_with_the_fix() {
    let Some(db) = pg("pg_cdc_nokey") else { return };
    db.sql("CREATE TABLE logs (at timestamptz, line text); INSERT INTO logs VALUES (now(), 'one');");
    let scratch = Scratch::new();
    pipeline(&scratch, &db, "tables = [\"logs\"]\ntarget_prefix = \"bronze.pg_\"\nmode = \"cdc\"", "");
    let run = scratch.inlet(&["run"]);
    assert_ne!(run.code, Some(0));
    assert!(run.stdout.contains("REPLICA IDENTITY FULL") && run.stdout.contains("public.logs"), "{}", run.stdout);
    // With the fix, its changes land, deletes with the whole old row.
    db.sql("ALTER TABLE logs REPLICA IDENTITY FULL");
    assert_eq!(scratch.run_ok().source("pg")["rows"].as_i64(), Some(1));
    db.sql("DELETE FROM logs; INSERT INTO logs VALUES (now(), 'two');");
    scratch.run_ok();
    let changes = duck_text(&scratch, "bronze.pg_logs", "SELECT _op, line FROM {t} ORDER BY _lsn");
    assert_eq!(changes, [["snapshot", "one"], ["delete", "one"], ["insert", "two"]]);
}

#[test]
fn cdc_reads_a_partitioned_table_with_generated_columns_from_empty() {
    let Some(db) = pg("pg_cdc_parts") else { return };
    db.sql(
        "CREATE TABLE customers (id int, name text, big text, n int, twice int GENERATED ALWAYS AS (n * 2) STORED,
           PRIMARY KEY (id)) PARTITION BY RANGE (id);
         CREATE TABLE customers_low PARTITION OF customers FOR VALUES FROM (0) TO (1000);
         CREATE TABLE customers_high PARTITION OF customers FOR VALUES FROM (1000) TO (100000);",
    );
    let scratch = Scratch::new();
    cdc_pipeline(&scratch, &db, "", "");
    // An empty table: its snapshot lands no rows, but the table and its position are made.
    let run = scratch.run_ok();
    assert_eq!(run.source("pg")["rows"].as_i64(), Some(0));
    assert!(scratch.path("lake/bronze/pg_customers/_delta_log").exists(), "the position was committed");
    db.sql(
        "INSERT INTO customers (id, name, big, n) SELECT g, 'c' || g, 'b', g FROM generate_series(990, 1010) g;
         UPDATE customers SET n = 0 WHERE id = 995;
         UPDATE customers SET id = 2000 WHERE id = 999;
         DELETE FROM customers WHERE id = 1005;",
    );
    scratch.run_ok();
    // The changes came from the slot the first run made (not a new snapshot), named by the
    // partitioned table, without the generated column.
    let ops =
        duck_text(&scratch, "bronze.pg_customers", "SELECT _op, count(*)::varchar FROM {t} GROUP BY 1 ORDER BY 1");
    // Moving a row to another partition is a delete and an insert.
    assert_eq!(ops, [["delete", "2"], ["insert", "22"], ["update", "1"]]);
    assert_eq!(silver_rows(&scratch), source_rows(&db));
}

#[test]
fn a_slot_that_is_not_the_tables_is_refused() {
    let Some(db) = pg("pg_cdc_slot") else { return };
    let Some(other) = pg("pg_cdc_slot_other") else { return };
    db.sql(CUSTOMERS);
    // Another database holds a slot of the name the source asks for.
    let taken = format!("inlet_{}", db.database);
    other.sql(&format!("SELECT 1 FROM pg_create_logical_replication_slot('{taken}', 'pgoutput')"));
    let scratch = Scratch::new();
    cdc_pipeline(&scratch, &db, "", "");
    let run = scratch.inlet(&["run"]);
    assert_ne!(run.code, Some(0));
    assert!(run.stdout.contains("not this source's"), "{}", run.stdout);
    other.sql(&format!("SELECT pg_drop_replication_slot('{taken}')"));
    scratch.run_ok();
    // Someone moves the slot past what the table holds: refused, never read from.
    db.sql("INSERT INTO customers VALUES (900, 'x', 'y', 1)");
    db.sql(&format!("SELECT 1 FROM pg_replication_slot_advance('{taken}', pg_current_wal_lsn())"));
    let run = scratch.inlet(&["run"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stdout.contains("cannot be read from") && run.stdout.contains("`inlet resnapshot pg`"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_lost_slot_is_started_over_by_resnapshot_without_doubles() {
    let Some(db) = pg("pg_cdc_resnapshot") else { return };
    db.sql(CUSTOMERS);
    let scratch = Scratch::new();
    cdc_pipeline(&scratch, &db, "", "");
    scratch.run_ok();
    db.sql(
        "UPDATE customers SET n = n + 1 WHERE id <= 20;
         DELETE FROM customers WHERE id BETWEEN 150 AND 159;
         INSERT INTO customers SELECT g, 'c' || g, 'small', g FROM generate_series(201, 210) g;",
    );
    scratch.run_ok();
    assert_eq!(silver_rows(&scratch), source_rows(&db));
    // The slot is lost (dropped here; `max_slot_wal_keep_size` gives the same), and the
    // table changes while nothing reads it: deletes, updates (one to a TOASTed value), a
    // key deleted and inserted again, new rows.
    let slot = format!("inlet_{}", db.database);
    db.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    db.sql(
        "DELETE FROM customers WHERE id <= 10;
         UPDATE customers SET name = 'gap', big = 'gap' WHERE id BETWEEN 20 AND 30;
         DELETE FROM customers WHERE id = 40; INSERT INTO customers VALUES (40, 'again', 'x', 40);
         INSERT INTO customers SELECT g, 'new', 'y', g FROM generate_series(300, 305) g;",
    );
    let run = scratch.inlet(&["run"]);
    assert_ne!(run.code, Some(0), "a lost slot is an error");
    assert!(run.stdout.contains("no longer exists") && run.stdout.contains("`inlet resnapshot pg`"), "{}", run.stdout);
    let before = scratch.duckdb_or_zero("bronze.pg_customers", "SELECT count(*) FROM {t}");
    let resnapshot = scratch.inlet(&["resnapshot", "pg", "--output", "json"]);
    assert_eq!(resnapshot.code, Some(0), "{}\n{}", resnapshot.stdout, resnapshot.stderr);
    let report: Value = serde_json::from_str(&resnapshot.stdout).unwrap();
    let live: i64 = db.sql("SELECT count(*) FROM customers").parse().unwrap();
    // The new snapshot, and a delete for each key live in the replaced log that it lacks:
    // ids 1-10 (deleted in the gap); 40 came back.
    assert_eq!(report["sources"][0]["rows"].as_i64(), Some(live + 10), "{}", resnapshot.stdout);
    assert!(report["tables"].as_array().is_none_or(Vec::is_empty), "derived tables wait for the next run");
    let ops = duck_text(
        &scratch,
        "bronze.pg_customers",
        "SELECT _op, count(*)::varchar, count(DISTINCT id)::varchar FROM {t} GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        ops,
        [["delete".to_owned(), "10".into(), "10".into()], ["snapshot".into(), live.to_string(), live.to_string()]],
        "the replaced log is gone (it had {before} rows), nothing doubled"
    );
    let deleted = duck_text(
        &scratch,
        "bronze.pg_customers",
        "SELECT min(id)::varchar, max(id)::varchar FROM {t} WHERE _op = 'delete'",
    );
    assert_eq!(deleted, [["1", "10"]]);
    // The replaced rows stay in the table's history.
    let history = scratch.inlet(&["history", "bronze.pg_customers", "--output", "json"]);
    assert!(history.stdout.contains("started over"), "{}", history.stdout);
    // Silver follows: the deletes of the gap applied, its updates and inserts in.
    scratch.run_ok();
    assert_eq!(silver_rows(&scratch), source_rows(&db), "silver after the resnapshot");
    // The new slot streams from the new snapshot's consistent point.
    db.sql("UPDATE customers SET n = -1 WHERE id = 50; DELETE FROM customers WHERE id = 60; INSERT INTO customers VALUES (400, 'later', 'z', 4);");
    let run = scratch.run_ok();
    assert_eq!(run.source("pg")["rows"].as_i64(), Some(3), "{}", run.source("pg"));
    assert_eq!(silver_rows(&scratch), source_rows(&db), "silver after streaming again");
    // Starting over again is safe: nothing was deleted, so no deletes land. The snapshot's
    // `_lsn` is where the replaced log stood.
    let stood = logged_lsn(&scratch.path("lake/bronze/pg_customers"));
    let again = scratch.inlet(&["resnapshot", "pg", "--output", "json"]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    let live: i64 = db.sql("SELECT count(*) FROM customers").parse().unwrap();
    let report: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(report["sources"][0]["rows"].as_i64(), Some(live));
    let lsns = duck_text(&scratch, "bronze.pg_customers", "SELECT DISTINCT _lsn::varchar FROM {t}");
    assert_eq!(lsns, [[stood.to_string()]]);
    scratch.run_ok();
    assert_eq!(silver_rows(&scratch), source_rows(&db));
    // A resnapshot killed after its first commit (which replaced the rows), run again: the
    // rest of the snapshot, then the deletes the first one owed.
    db.sql(
        "INSERT INTO customers SELECT g, 'many', 'm', g FROM generate_series(10000, 39999) g;
         DELETE FROM customers WHERE id BETWEEN 100 AND 109;",
    );
    scratch.run_ok();
    db.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    db.sql("DELETE FROM customers WHERE id BETWEEN 110 AND 114; UPDATE customers SET n = 7 WHERE id = 120;");
    cdc_pipeline(&scratch, &db, "", "rows_per_chunk = 1000\nmax_records_per_commit = 2000");
    let log = scratch.path("lake/bronze/pg_customers/_delta_log");
    // Commit files only (not a writer's temporary file).
    let commits = || {
        std::fs::read_dir(&log)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json") && n.starts_with('0')))
            .count()
    };
    let before = commits();
    let mut child = Command::new(inlet_bin())
        .args(["resnapshot", "pg"])
        .current_dir(scratch.path(""))
        .env("INLET_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while commits() == before && child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(commits() > before, "the resnapshot was killed before its first commit");
    assert!(!status.success(), "the resnapshot ended before it was killed");
    // Run again before the first finished: it still owes the deletes of the log the first
    // one replaced.
    let again = scratch.inlet(&["resnapshot", "pg", "--output", "json"]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    let report: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(report["sources"][0]["started_over"], true, "{}", again.stdout);
    scratch.run_ok();
    assert_eq!(silver_rows(&scratch), source_rows(&db), "silver after a killed resnapshot run again");
    let live: i64 = db.sql("SELECT count(*) FROM customers").parse().unwrap();
    let (snapshot, distinct) = (
        scratch.duckdb_or_zero("bronze.pg_customers", "SELECT count(*) FROM {t} WHERE _op = 'snapshot'"),
        scratch.duckdb_or_zero("bronze.pg_customers", "SELECT count(DISTINCT id) FROM {t} WHERE _op = 'snapshot'"),
    );
    assert_eq!((snapshot, distinct), (live, live), "each row once in the new snapshot");
    let deletes = duck_text(
        &scratch,
        "bronze.pg_customers",
        "SELECT string_agg(id::varchar, ',' ORDER BY id) FROM {t} WHERE _op = 'delete'",
    );
    assert_eq!(deletes, [["110,111,112,113,114"]]);
    // A file source cannot start over; an unknown name is named.
    let unknown = scratch.inlet(&["resnapshot", "nope"]);
    assert_ne!(unknown.code, Some(0));
    assert!(unknown.stderr.contains("no source named `nope`"), "{}", unknown.stderr);
}

#[test]
fn the_postgres_sample_keeps_silver_current_and_the_history() {
    let Some(db) = pg("pg_sample") else { return };
    let sample = inlet_tests::workspace_root().join("sample-data/postgres");
    db.sql(&std::fs::read_to_string(sample.join("setup.sql")).unwrap());
    let scratch = Scratch::new();
    inlet_tests::copy_dir(&sample, scratch.path("").as_path());
    let _ = std::fs::remove_dir_all(scratch.path("lake"));
    let env = [("PG_URL", db.url.as_str())];
    let customers = |scratch: &Scratch| {
        duck_text(
            scratch,
            "silver.customers",
            "SELECT id::varchar, name, email, tier, md5(profile) FROM {t} ORDER BY id",
        )
    };
    let source = || db.rows("SELECT id::text, name, email, tier, md5(profile) FROM customers ORDER BY customers.id");
    let orders = |scratch: &Scratch| {
        duck_text(
            scratch,
            "silver.orders",
            "SELECT order_id::varchar, status, amount::varchar FROM {t} ORDER BY order_id",
        )
    };
    let source_orders = || db.rows("SELECT order_id::text, status, amount::text FROM orders ORDER BY orders.order_id");
    scratch.run_ok_env(&env);
    assert_eq!(customers(&scratch), source());
    assert_eq!(orders(&scratch), source_orders());
    // Tiers change, emails change (the TOASTed profile left alone), orders come and go.
    db.sql(
        "UPDATE customers SET tier = 'gold', updated_at = now() WHERE id IN (1, 2);
         UPDATE customers SET email = 'new' || id || '@example.com' WHERE id <= 10;
         UPDATE orders SET status = 'shipped' WHERE order_id <= 20;
         DELETE FROM orders WHERE order_id > 190;
         INSERT INTO customers (id, name) VALUES (51, 'new customer');
         INSERT INTO orders VALUES (201, 51, 9.99, 'new', now());",
    );
    scratch.run_ok_env(&env);
    assert_eq!(customers(&scratch), source());
    assert_eq!(orders(&scratch), source_orders());
    let history = duck_text(
        &scratch,
        "silver.customer_tiers",
        "SELECT id::varchar, tier, _is_current::varchar FROM {t} WHERE id IN (1, 2, 5) ORDER BY id, _valid_from",
    );
    assert_eq!(
        history,
        [
            ["1", "basic", "false"],
            ["1", "gold", "true"],
            ["2", "basic", "false"],
            ["2", "gold", "true"],
            ["5", "gold", "true"]
        ]
    );
}
