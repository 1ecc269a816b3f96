//! Helpers for the end-to-end tests: a scratch lake, the real `inlet` binary, and DuckDB
//! (with its Delta extension) as the independent reader every test checks tables with.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub mod readers;

/// The `inlet` binary built beside this test binary (`scripts/test.sh` builds it first).
pub fn inlet_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(format!("inlet{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A scratch directory holding a pipeline file, landing directories and the lake.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    /// Tables not read by the other engines when the test ends, with why (a test that
    /// breaks them on purpose).
    readers_skipped: std::sync::Mutex<Vec<(String, String)>>,
}

/// What one `inlet` invocation did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// The JSON report of `inlet run --output json`.
    pub fn report(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not a JSON report ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }

    /// The report of one source.
    pub fn source(&self, name: &str) -> Value {
        let report = self.report();
        report["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no source {name} in {report}"))
    }
}

impl Drop for Scratch {
    /// A passing test's tables are read by the other engines.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        self.check_readers();
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().unwrap(), readers_skipped: Default::default() }
    }

    /// `table` is not read by the other engines when the test ends, for this reason
    /// (printed): it is broken on purpose.
    pub fn skip_readers(&self, table: &str, why: &str) {
        self.readers_skipped.lock().unwrap().push((table.to_owned(), why.to_owned()));
    }

    /// Every table of the lake read by DuckDB, Spark, Trino and ClickHouse, each compared
    /// with what `inlet query` gives ([`readers::check`]); nothing without the reader service.
    pub fn check_readers(&self) {
        let tables = readers::tables_under(&self.path("lake"));
        if tables.is_empty() {
            return;
        }
        let Some(address) = readers::service() else { return };
        let skipped = self.readers_skipped.lock().unwrap().clone();
        for (table, path) in tables {
            match skipped.iter().find(|(t, _)| *t == table) {
                Some((_, why)) => eprintln!("readers: `{table}` not checked: {why}"),
                None => {
                    self.check_table_readers(&address, &table, &path, None);
                }
            }
        }
    }

    /// One table at `version` (or the latest) through every engine of the reader service.
    pub fn check_table_readers(
        &self,
        address: &str,
        table: &str,
        path: &Path,
        version: Option<i64>,
    ) -> readers::Checked {
        let lake = self.path("lake").display().to_string();
        self.check_readers_at(address, &lake, table, &path.display().to_string(), version)
    }

    /// The tables of a lake on the S3 test server (`s3://bucket/prefix`), at their latest
    /// version, through every engine of the reader service (each reading S3 itself); nothing
    /// without the service.
    pub fn check_s3_readers(&self, lake: &str, tables: &[&str]) -> Vec<readers::Checked> {
        let Some(address) = readers::service() else { return Vec::new() };
        tables
            .iter()
            .map(|table| {
                let (layer, name) = table.split_once('.').unwrap();
                self.check_readers_at(&address, lake, table, &format!("{lake}/{layer}/{name}"), None)
            })
            .collect()
    }

    /// `table` of the lake at `lake`, found at `location`, compared with what `inlet query`
    /// gives of it.
    fn check_readers_at(
        &self,
        address: &str,
        lake: &str,
        table: &str,
        location: &str,
        version: Option<i64>,
    ) -> readers::Checked {
        // A pipeline file of its own: the test's may be broken on purpose.
        let pipeline = self.write(".readers/inlet.toml", format!("[pipeline]\nname = \"readers\"\nlake = {lake:?}\n"));
        let reference = self.path(&format!(".readers/{table}.parquet"));
        let sql = format!("SELECT * FROM {table}");
        let reference_text = reference.display().to_string();
        let pipeline_text = pipeline.display().to_string();
        let mut args =
            vec!["query", sql.as_str(), "-f", pipeline_text.as_str(), "--output", "parquet", reference_text.as_str()];
        let version_text = version.map(|v| v.to_string());
        if let Some(v) = &version_text {
            args.extend(["--as-of", v.as_str()]);
        }
        let run = self.inlet(&args);
        assert_eq!(run.code, Some(0), "inlet query of `{table}` for the readers: {}{}", run.stdout, run.stderr);
        readers::check(address, table, location, version, &reference)
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes a file, creating its directory.
    pub fn write(&self, relative: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Writes `inlet.toml`.
    pub fn pipeline(&self, toml: &str) {
        self.write("inlet.toml", toml);
    }

    /// Runs `inlet <args>` in the scratch directory.
    pub fn inlet(&self, args: &[&str]) -> Run {
        Run::from(
            Command::new(inlet_bin())
                .args(args)
                .current_dir(self.dir.path())
                .env("INLET_LOG", "warn")
                .output()
                .unwrap(),
        )
    }

    /// Runs `inlet <args>` with extra environment variables, logging at `log`.
    pub fn inlet_env(&self, args: &[&str], env: &[(&str, &str)], log: &str) -> Run {
        Run::from(
            Command::new(inlet_bin())
                .args(args)
                .current_dir(self.dir.path())
                .env("INLET_LOG", log)
                .envs(env.iter().copied())
                .output()
                .unwrap(),
        )
    }

    /// `inlet run --output json` with extra environment variables, asserting success.
    pub fn run_ok_env(&self, env: &[(&str, &str)]) -> Run {
        let run = self.inlet_env(&["run", "--output", "json"], env, "warn");
        assert_eq!(run.code, Some(0), "inlet run failed:\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
        run
    }

    /// `inlet run --output json`, asserting the exit code.
    pub fn run_ok(&self) -> Run {
        let run = self.inlet(&["run", "--output", "json"]);
        assert_eq!(run.code, Some(0), "inlet run failed:\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
        run
    }

    /// Path of a table in the lake (`lake/<layer>/<name>`).
    pub fn table(&self, name: &str) -> String {
        let (layer, table) = name.split_once('.').unwrap();
        self.path(&format!("lake/{layer}/{table}")).display().to_string()
    }

    /// [`rows_and_distinct`] of one of this lake's tables.
    pub fn rows_and_distinct(&self, table: &str, key: &str) -> (i64, i64) {
        rows_and_distinct(&self.table(table), key)
    }

    /// The single number a query over one of this lake's tables gives; 0 while the table
    /// does not exist yet.
    pub fn duckdb_or_zero(&self, table: &str, sql: &str) -> i64 {
        if !Path::new(&self.table(table)).join("_delta_log").exists() {
            return 0;
        }
        single_i64(&self.duckdb(table, sql))
    }

    /// Runs SQL in DuckDB where `{t}` stands for `delta_scan('<table>')`.
    /// Rows, distinct ids, smallest and largest `id` of a table (0 for none).
    pub fn ids(&self, table: &str) -> [i64; 4] {
        let rows = self.duckdb(table, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {t}");
        [0, 1, 2, 3].map(|i| rows[0][i].as_i64().unwrap_or(0))
    }

    pub fn duckdb(&self, table: &str, sql: &str) -> Vec<Vec<Value>> {
        let scan = format!("delta_scan('{}')", self.table(table));
        duckdb(&sql.replace("{t}", &scan))
    }
}

/// Runs SQL in DuckDB with the Delta extension and returns the rows as JSON values.
///
/// Needs a Python with `duckdb` and `duckdb-ext-delta`: `INLET_PYTHON`, else the workspace's
/// `.venv` that `scripts/test.sh` installs. Without one the calling test fails, so no check is
/// silently skipped.
pub fn duckdb(sql: &str) -> Vec<Vec<Value>> {
    duckdb_batch(&[sql.to_owned()]).pop().unwrap()
}

/// The rows of the Delta table at `location` (a path or an `s3://` URL), read by DuckDB, and
/// how many distinct values of `key` (a column, or a tuple such as `(_source_file,
/// _source_row)`) they hold: the two are equal when nothing was doubled.
pub fn rows_and_distinct(location: &str, key: &str) -> (i64, i64) {
    let rows = duckdb(&format!("SELECT count(*), count(DISTINCT {key}) FROM delta_scan('{location}')"));
    (rows[0][0].as_i64().unwrap(), rows[0][1].as_i64().unwrap())
}

/// Runs several queries in one DuckDB session; one result per query.
pub fn duckdb_batch(sqls: &[String]) -> Vec<Vec<Vec<Value>>> {
    let venv = workspace_root().join(".venv/bin/python");
    let python = std::env::var("INLET_PYTHON").ok().or_else(|| venv.exists().then(|| venv.display().to_string())).unwrap_or_else(|| {
        panic!("no DuckDB: run the tests with scripts/test.sh, which installs DuckDB and its Delta extension into .venv")
    });
    const SCRIPT: &str = r#"
import json, os, sys, datetime, decimal
import duckdb, duckdb_ext
con = duckdb.connect()
con.execute("SET extension_directory = ?", [os.path.join(list(duckdb_ext.__path__)[0], "extensions")])
con.execute("LOAD delta")
con.execute("SET TimeZone = 'UTC'")
con.execute("SET enable_progress_bar = false")
endpoint = os.environ.get("INLET_S3_ENDPOINT")
if endpoint:
    # Tables on the S3 test server, read through DuckDB's own S3 client.
    con.execute("LOAD httpfs")
    host = endpoint.split("://", 1)[1]
    con.execute(f"""CREATE SECRET inlet_s3 (TYPE s3, KEY_ID '{os.environ["AWS_ACCESS_KEY_ID"]}',
        SECRET '{os.environ["AWS_SECRET_ACCESS_KEY"]}', REGION '{os.environ.get("AWS_REGION", "us-east-1")}',
        ENDPOINT '{host}', URL_STYLE 'path', USE_SSL {str(endpoint.startswith("https")).lower()})""")
def plain(v):
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, bytes):
        return v.hex()
    return v
results = []
for sql in json.loads(sys.argv[1]):
    rows = con.execute(sql).fetchall()
    results.append([[plain(v) for v in row] for row in rows])
print(json.dumps(results, default=str))
"#;
    let queries = serde_json::to_string(sqls).unwrap();
    let output = Command::new(python).arg("-c").arg(SCRIPT).arg(&queries).output().unwrap();
    assert!(output.status.success(), "duckdb failed on `{queries}`:\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The S3-compatible test server (moto, with SQS) that `scripts/test.sh` starts; its
/// address and credentials are in the standard AWS environment variables.
pub struct S3 {
    pub endpoint: String,
}

/// The S3 test server, or `None` (printing that `test` was skipped) when there is none;
/// under `scripts/test.sh` (`INLET_REQUIRE_SERVICES`) a missing server fails the test.
pub fn s3(test: &str) -> Option<S3> {
    match std::env::var("INLET_S3_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(S3 { endpoint }),
        _ if std::env::var_os("INLET_REQUIRE_SERVICES").is_some() => {
            panic!("{test}: no S3 server (INLET_S3_ENDPOINT); scripts/test.sh starts one")
        }
        _ => {
            eprintln!("skipped: {test}: no S3 server (INLET_S3_ENDPOINT); run scripts/test.sh");
            None
        }
    }
}

impl S3 {
    /// Runs Python with boto3 against the server (`s3` and `sqs` clients are defined).
    pub fn python(&self, code: &str) -> String {
        let script = format!("import boto3, json, sys\ns3 = boto3.client('s3')\nsqs = boto3.client('sqs')\n{code}");
        let output = Command::new(python()).arg("-c").arg(&script).output().unwrap();
        assert!(output.status.success(), "boto3 failed on:\n{script}\n{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Creates a bucket with a fresh name, through the S3 API.
    pub fn bucket(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", uuid_like());
        self.python(&format!("s3.create_bucket(Bucket='{name}')"));
        name
    }

    /// A new queue that `bucket` sends its event notifications to (`events` such as
    /// `s3:ObjectCreated:*`, for keys under `prefix`, or all keys when it is empty), set up
    /// through the AWS API; its URL. moto then sends an `s3:TestEvent` first.
    pub fn notification_queue(&self, bucket: &str, events: &[&str], prefix: &str) -> String {
        let filter = if prefix.is_empty() {
            String::new()
        } else {
            format!(", 'Filter': {{'Key': {{'FilterRules': [{{'Name': 'prefix', 'Value': '{prefix}'}}]}}}}")
        };
        self.python(&format!(
            r#"
url = sqs.create_queue(QueueName='q-{bucket}')['QueueUrl']
arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=['QueueArn'])['Attributes']['QueueArn']
s3.put_bucket_notification_configuration(Bucket='{bucket}', NotificationConfiguration={{
    'QueueConfigurations': [{{'QueueArn': arn, 'Events': {events:?}{filter}}}]}})
print(url)
"#
        ))
        .trim()
        .to_owned()
    }

    /// Keys under `prefix` in `bucket`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self.python(&format!(
            "p = s3.get_paginator('list_objects_v2')\nkeys = [o['Key'] for page in p.paginate(Bucket='{bucket}', Prefix='{prefix}') for o in page.get('Contents', [])]\nprint(json.dumps(keys))"
        ));
        serde_json::from_str(out.trim()).unwrap()
    }
}

/// A database of its own on the test PostgreSQL server (`scripts/test.sh` starts one, with
/// `wal_level=logical`), dropped with its replication slots when dropped.
pub struct Pg {
    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub url: String,
    pub database: String,
    /// The `psql` to run SQL with.
    bin: PathBuf,
}

/// A fresh database on the PostgreSQL test server (`INLET_PG_URL`), named after `test`, or
/// `None` (printing that `test` was skipped) when there is no server; under
/// `scripts/test.sh` (`INLET_REQUIRE_SERVICES`) a missing server fails the test.
pub fn pg(test: &str) -> Option<Pg> {
    let server = match std::env::var("INLET_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("INLET_REQUIRE_SERVICES").is_some() => {
            panic!("{test}: no PostgreSQL server (INLET_PG_URL); scripts/test.sh starts one")
        }
        _ => {
            eprintln!("skipped: {test}: no PostgreSQL server (INLET_PG_URL); run scripts/test.sh");
            return None;
        }
    };
    let bin = std::env::var_os("INLET_PG_BIN")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("psql"), |dir| PathBuf::from(dir).join("psql"));
    // Identifiers are at most 63 bytes: the test's part gives way to the unique part.
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
    };
    let unique = clean(&uuid_like());
    let database = format!("{}_{unique}", clean(test).chars().take(62 - unique.len()).collect::<String>());
    psql(&bin, &server, &format!("CREATE DATABASE \"{database}\""), &[])
        .unwrap_or_else(|e| panic!("{test}: cannot create database {database} on {server}:\n{e}"));
    Some(Pg { url: with_database(&server, &database), database, bin })
}

impl Pg {
    /// Runs SQL (one statement or several) in the database; what it printed, trimmed (`-At`:
    /// values unaligned, `|` between columns). Panics with the SQL and psql's errors on failure.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|e| panic!("psql failed on:\n{sql}\n{e}"))
    }

    /// [`Pg::sql`], returning psql's errors instead of panicking.
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        psql(&self.bin, &self.url, sql, &[]).map(|out| out.trim().to_owned())
    }

    /// The rows of a query, each value as psql prints it (`t`/`f`, `2024-01-02 03:04:05+00`,
    /// ...), newlines and `|` included; NULL is `<NULL>`. Give one query that returns rows.
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        let out = psql(&self.bin, &self.url, sql, &["-F", "\u{1f}", "-R", "\u{1e}", "-P", "null=<NULL>"])
            .unwrap_or_else(|e| panic!("psql failed on:\n{sql}\n{e}"));
        if out.is_empty() {
            return Vec::new();
        }
        // psql ends the last row with a newline, not the record separator.
        let out = out.strip_suffix('\n').unwrap_or(&out);
        out.split('\u{1e}').map(|row| row.split('\u{1f}').map(str::to_owned).collect()).collect()
    }

    /// The `confirmed_flush_lsn` and `restart_lsn` of a replication slot (0 for NULL), or
    /// `None` when there is no such slot.
    pub fn slot_lsn(&self, slot: &str) -> Option<(u64, u64)> {
        let rows = self.rows(&format!(
            "SELECT confirmed_flush_lsn, restart_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
            slot.replace('\'', "''")
        ));
        let lsn = |text: &str| if text == "<NULL>" { 0 } else { parse_lsn(text) };
        rows.first().map(|row| (lsn(&row[0]), lsn(&row[1])))
    }

    /// The server's current WAL write position.
    pub fn current_wal_lsn(&self) -> u64 {
        parse_lsn(&self.sql("SELECT pg_current_wal_lsn()"))
    }
}

impl Drop for Pg {
    /// Drops the database and its slots (a slot left behind would hold WAL back for the rest
    /// of the run), from the `postgres` database, ignoring errors. Sessions still in it (a
    /// walsender keeps its slot active, and an active slot stops `DROP DATABASE`) are ended first.
    fn drop(&mut self) {
        let postgres = with_database(&self.url, "postgres");
        let db = &self.database;
        for sql in [
            format!("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = '{db}'"),
            format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = '{db}' AND NOT active"
            ),
            format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
        ] {
            let _ = psql(&self.bin, &postgres, &sql, &[]);
        }
    }
}

/// A WAL position as PostgreSQL prints it (`16/B374D848`) as a number.
pub fn parse_lsn(text: &str) -> u64 {
    let parse = |half: &str| u64::from_str_radix(half, 16).unwrap_or_else(|e| panic!("not an LSN: {text:?} ({e})"));
    let (high, low) = text.trim().split_once('/').unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    (parse(high) << 32) | parse(low)
}

/// Runs SQL (on stdin, so scripts of several statements work) with `psql -At` and `args`
/// against `url`, stopping at the first error; its output, or its errors.
fn psql(bin: &Path, url: &str, sql: &str, args: &[&str]) -> Result<String, String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(bin)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-d", url, "-f", "-"])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    // Written beside the reading, so a large script and a large result cannot block each other.
    let mut stdin = child.stdin.take().unwrap();
    let input = sql.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let _ = writer.join();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("psql {}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// `url` (`postgres://user@host:port/db?options`) naming another database.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(base, query)| (base, Some(query)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let end = base[authority..].find('/').map_or(base.len(), |i| authority + i);
    match query {
        Some(query) => format!("{}/{database}?{query}", &base[..end]),
        None => format!("{}/{database}", &base[..end]),
    }
}

/// A name part unique enough for buckets made by concurrent tests.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{:x}-{}", std::process::id(), nanos & 0xffff_ffff, N.fetch_add(1, Ordering::Relaxed))
}

/// One integer from a one-row, one-column result.
pub fn single_i64(rows: &[Vec<Value>]) -> i64 {
    rows[0][0].as_i64().unwrap_or_else(|| panic!("not an integer: {rows:?}"))
}

/// The workspace root (for `sample-data/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    // In name order, so modification times (inlet's ingestion order) follow names.
    let mut entries: Vec<_> = std::fs::read_dir(from).unwrap().map(Result::unwrap).collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A TCP proxy in front of the S3 server that fails on command: it answers 500 and cuts the
/// connections it carries, or it hangs (holds every byte, both ways, until told to go on), or
/// it refuses PUTs to some paths (`403`, which clients do not retry).
pub struct FaultProxy {
    pub address: String,
    faults: std::sync::Arc<Faults>,
    live: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

/// What the proxy is told to do, shared with its connections.
#[derive(Default)]
struct Faults {
    failing: std::sync::atomic::AtomicBool,
    hanging: std::sync::atomic::AtomicBool,
    /// PUT requests whose request line contains this are refused.
    forbidden: std::sync::Mutex<Option<String>>,
    /// GET requests whose request line contains this fail with 503.
    unavailable: std::sync::Mutex<Option<String>>,
    /// Connections whose client gave up (closed them) while a request was held.
    abandoned: std::sync::atomic::AtomicUsize,
}

impl FaultProxy {
    /// Proxies `upstream` (`host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let faults = std::sync::Arc::new(Faults::default());
        let live = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (shared, conns, upstream) = (faults.clone(), live.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if shared.failing.load(Ordering::SeqCst) {
                    std::thread::spawn(move || fail(client));
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else { continue };
                conns.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                let (request, response) =
                    ((client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client));
                let (for_request, for_response) = (shared.clone(), shared.clone());
                std::thread::spawn(move || pass_on(request.0, request.1, &for_request, true));
                std::thread::spawn(move || pass_on(response.0, response.1, &for_response, false));
            }
        });
        FaultProxy { address, faults, live }
    }

    /// Starts or stops failing.
    pub fn failing(&self, on: bool) {
        self.faults.failing.store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            for conn in self.live.lock().unwrap().drain(..) {
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Connections whose client closed them while the proxy held a request (a timeout).
    pub fn abandoned(&self) -> usize {
        self.faults.abandoned.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts or stops hanging. Bytes held while hanging are passed on afterwards, so a
    /// request its client gave up on still reaches the server, late.
    pub fn hanging(&self, on: bool) {
        self.faults.hanging.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Refuses PUT requests whose path contains `pattern` (none when `None`).
    pub fn forbid_puts(&self, pattern: Option<&str>) {
        *self.faults.forbidden.lock().unwrap() = pattern.map(str::to_owned);
    }

    /// Fails GET requests whose path contains `pattern` with 503 (none when `None`): the
    /// store is there, its reads of some objects are not.
    pub fn fail_gets(&self, pattern: Option<&str>) {
        *self.faults.unavailable.lock().unwrap() = pattern.map(str::to_owned);
    }
}

/// Copies one direction of a connection, holding what it read while the proxy hangs. On the
/// request side it counts clients that gave up while a request was held, and answers a
/// forbidden PUT itself.
fn pass_on(mut from: std::net::TcpStream, mut to: std::net::TcpStream, faults: &Faults, requests: bool) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let refusals = [
            ("PUT ", faults.forbidden.lock().unwrap().clone(), "403 Forbidden", "AccessDenied"),
            ("GET ", faults.unavailable.lock().unwrap().clone(), "503 Service Unavailable", "SlowDown"),
        ];
        for (method, pattern, status, code) in refusals {
            let Some(pattern) = pattern.filter(|_| requests) else { continue };
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.lines().any(|line| line.starts_with(method) && line.contains(&pattern)) {
                let body = format!("<Error><Code>{code}</Code><Message>injected</Message></Error>");
                let _ = write!(
                    from,
                    "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = from.shutdown(std::net::Shutdown::Both);
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
        let mut counted = false;
        while faults.hanging.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(20));
            if requests && !counted && from.set_read_timeout(Some(std::time::Duration::from_millis(1))).is_ok() {
                // The other end closed (this thread alone reads it): the client gave up.
                let closed = matches!(from.peek(&mut [0u8; 1]), Ok(0));
                let _ = from.set_read_timeout(None);
                if closed {
                    faults.abandoned.fetch_add(1, Ordering::SeqCst);
                    counted = true;
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Reads a request's head and answers 500.
fn fail(mut client: std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut buf = [0u8; 4096];
    let _ = client.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let _ = client.read(&mut buf);
    let body = "<Error><Code>InternalError</Code><Message>injected</Message></Error>";
    let _ = write!(
        client,
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A Python to run the test servers with: the one `scripts/test.sh` set up, else the
/// workspace's `.venv`, else `python3`.
pub fn python() -> String {
    let venv = workspace_root().join(".venv/bin/python");
    std::env::var("INLET_PYTHON")
        .ok()
        .or_else(|| venv.exists().then(|| venv.display().to_string()))
        .unwrap_or_else(|| "python3".to_owned())
}

/// The scripted REST API test server (`tests/servers/rest_server.py`, see its docstring for
/// every endpoint) on a free loopback port, stopped when dropped.
pub struct RestServer {
    pub url: String,
    pub log: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl RestServer {
    /// Starts the server with `args` (e.g. `["--records", "300"]`).
    pub fn start(args: &[&str]) -> RestServer {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let log = dir.path().join("requests.jsonl");
        let script = workspace_root().join("tests/servers/rest_server.py");
        let child = Command::new(python())
            .arg(&script)
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .args(args)
            .stdout(std::process::Stdio::null())
            // Clients killed mid-request make its handler threads complain: kept, not shown.
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Ok(port) = text.trim().parse::<u16>()
            {
                break port;
            }
            assert!(std::time::Instant::now() < deadline, "the REST test server did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        RestServer { url: format!("http://127.0.0.1:{port}"), log, child, _dir: dir }
    }

    /// Every request the server logged so far, in the order they were answered (a line
    /// being written now is left out).
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The logged requests to `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Value> {
        self.requests().into_iter().filter(|r| r["path"] == path).collect()
    }

    /// `GET` or `POST` (with a JSON body) a path of the server; the JSON it answers.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, text) = http(method, &format!("{}{path}", self.url), body.map(|b| b.to_string()));
        assert!((200..300).contains(&status), "{method} {path}: HTTP {status}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// The server's whole dataset, in (updated_at, id) order.
    pub fn records(&self) -> Vec<Value> {
        self.call("GET", "/_admin/records", None).as_array().unwrap().clone()
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 request (no TLS, `Connection: close`); the status and the body.
pub fn http(method: &str, url: &str, body: Option<String>) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    // A hung server fails the test instead of hanging the suite.
    stream.set_read_timeout(Some(std::time::Duration::from_secs(900))).unwrap();
    stream.set_write_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, text) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.to_owned())
}

/// Every file under `dir` (recursively) whose bytes contain one of `needles`, with it.
pub fn files_containing(dir: &Path, needles: &[&str]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.map(Result::unwrap) {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            for needle in needles {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push((path.clone(), (*needle).to_owned()));
                }
            }
        }
    }
    found
}

/// A free loopback port (for servers that take one on their command line).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills `inlet run` in `dir`, started afresh each time, until `times` runs were killed while
/// they were working: after they committed something and before they committed everything
/// (`progress` says how far the work is, `total` when it is done; at most four times
/// `times` tries). Each run is killed a random `after_commit_ms` after its first commit to
/// the lake, or at its next commit if that comes first (or at once if it ended first), so
/// kills land mid-work however slow or fast the machine is: no try finishes the work (which
/// would leave none for the tries after it) while more than two commits of it remain. How
/// many such kills there were.
pub fn kill_runs(
    dir: &Path,
    times: usize,
    after_commit_ms: std::ops::Range<u64>,
    seed: u64,
    progress: &dyn Fn() -> i64,
    total: i64,
) -> usize {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut mid_work = 0;
    for _ in 0..times * 4 {
        if mid_work >= times {
            break;
        }
        let before = progress();
        if before >= total {
            break;
        }
        let commits = lake_commits(dir);
        let mut child = Command::new(inlet_bin())
            .args(["run"])
            .current_dir(dir)
            .env("INLET_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while lake_commits(dir) == commits && child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a run committed nothing in two minutes");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let committed = lake_commits(dir);
        let kill_at =
            std::time::Instant::now() + std::time::Duration::from_millis(rng.random_range(after_commit_ms.clone()));
        while std::time::Instant::now() < kill_at
            && lake_commits(dir) == committed
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            child.kill().unwrap();
        }
        child.wait().unwrap();
        let after = progress();
        if killed && after > before && after < total {
            mid_work += 1;
        }
    }
    mid_work
}

/// The commit files of every table of the lake under `dir`.
fn lake_commits(dir: &Path) -> usize {
    fn count(path: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(path) else { return 0 };
        entries
            .flatten()
            .map(|entry| {
                let path = entry.path();
                if path.is_dir() {
                    count(&path)
                } else {
                    usize::from(
                        path.extension().is_some_and(|e| e == "json")
                            && path.parent().is_some_and(|p| p.ends_with("_delta_log")),
                    )
                }
            })
            .sum()
    }
    count(&dir.join("lake"))
}

/// Checks the page indexes of a Parquet file (a checkpoint) against its pages
/// (trinodb/trino#18760: Trino prunes pages by them): each page's values lie within the
/// bounds its column index gives, a page marked all-null holds no value, and the offset
/// index covers the row group's rows in order. A column chunk without indexes has nothing
/// to disagree with. Panics naming the column, row group and page.
pub fn check_page_indexes(path: &Path) {
    use parquet::column::reader::ColumnReader;
    use parquet::file::page_index::column_index::ColumnIndexMetaData;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::serialized_reader::ReadOptionsBuilder;

    let file = std::fs::File::open(path).unwrap();
    let options = ReadOptionsBuilder::new().with_page_index().build();
    let reader = SerializedFileReader::new_with_options(file, options).unwrap();
    let metadata = reader.metadata();
    let (Some(column_indexes), Some(offset_indexes)) = (metadata.column_index(), metadata.offset_index()) else {
        return;
    };
    for (group, group_meta) in metadata.row_groups().iter().enumerate() {
        let row_group = reader.get_row_group(group).unwrap();
        for (column, chunk) in group_meta.columns().iter().enumerate() {
            let name = chunk.column_path().string();
            let index = &column_indexes[group][column];
            let pages = offset_indexes[group][column].page_locations();
            let starts: Vec<i64> = pages.iter().map(|p| p.first_row_index).collect();
            assert!(
                starts.first() == Some(&0) && starts.windows(2).all(|w| w[0] < w[1]),
                "{}: `{name}` row group {group}: page first rows {starts:?}",
                path.display()
            );
            let rows = group_meta.num_rows();
            assert!(
                starts.last().is_some_and(|&s| s < rows.max(1)),
                "`{name}`: a page starts past the row group's {rows} rows"
            );
            if matches!(index, ColumnIndexMetaData::NONE) {
                continue;
            }
            assert_eq!(
                index.num_pages() as usize,
                pages.len(),
                "`{name}` row group {group}: column and offset index pages"
            );
            let descr = chunk.column_descr();
            let (max_def, max_rep) = (descr.max_def_level(), descr.max_rep_level());
            // The page (by the row it is in) of each non-null value, in order.
            let page_of_values = |defs: &[i16], reps: &[i16]| -> Vec<usize> {
                let mut row = -1i64;
                let mut out = Vec::new();
                for (i, def) in defs.iter().enumerate() {
                    if max_rep == 0 || reps[i] == 0 {
                        row += 1;
                    }
                    if *def == max_def {
                        out.push(starts.partition_point(|&s| s <= row) - 1);
                    }
                }
                out
            };
            let mut defs = Vec::new();
            let mut reps = Vec::new();
            let rows = usize::try_from(rows).unwrap();
            macro_rules! check_values {
                ($reader:expr, $index:expr, $less:expr) => {{
                    let mut values = Vec::new();
                    $reader.read_records(rows, Some(&mut defs), Some(&mut reps), &mut values).unwrap();
                    let pages_of = page_of_values(&defs, &reps);
                    assert_eq!(pages_of.len(), values.len(), "`{name}`: values and levels");
                    for (value, page) in values.iter().zip(pages_of) {
                        assert!(
                            !$index.is_null_page(page),
                            "`{name}` row group {group} page {page}: a value on a page indexed as all null"
                        );
                        if let (Some(min), Some(max)) = ($index.min_value(page), $index.max_value(page)) {
                            assert!(
                                !$less(value, min) && !$less(max, value),
                                "{}: `{name}` row group {group} page {page}: a value outside the page's indexed bounds",
                                path.display()
                            );
                        }
                    }
                }};
            }
            match (row_group.get_column_reader(column).unwrap(), index) {
                (ColumnReader::Int64ColumnReader(mut r), ColumnIndexMetaData::INT64(i)) => {
                    check_values!(r, i, |a: &i64, b: &i64| a < b)
                }
                (ColumnReader::Int32ColumnReader(mut r), ColumnIndexMetaData::INT32(i)) => {
                    check_values!(r, i, |a: &i32, b: &i32| a < b)
                }
                (ColumnReader::BoolColumnReader(mut r), ColumnIndexMetaData::BOOLEAN(i)) => {
                    check_values!(r, i, |a: &bool, b: &bool| a < b)
                }
                (ColumnReader::ByteArrayColumnReader(mut r), ColumnIndexMetaData::BYTE_ARRAY(i)) => {
                    // Unsigned byte order, as Parquet orders UTF-8 and binary; truncated
                    // bounds stay a lower and an upper bound.
                    let mut values = Vec::new();
                    r.read_records(rows, Some(&mut defs), Some(&mut reps), &mut values).unwrap();
                    let pages_of = page_of_values(&defs, &reps);
                    for (value, page) in values.iter().zip(pages_of) {
                        assert!(
                            !i.is_null_page(page),
                            "`{name}` row group {group} page {page}: a value on a page indexed as all null"
                        );
                        if let (Some(min), Some(max)) = (i.min_value(page), i.max_value(page)) {
                            let value = value.data();
                            assert!(
                                min <= value && value <= max,
                                "{}: `{name}` row group {group} page {page}: a value outside the page's indexed bounds",
                                path.display()
                            );
                        }
                    }
                }
                // Other types (floats, fixed-length) are bounds Trino does not prune a
                // checkpoint by; the structure above is checked for them.
                _ => {}
            }
        }
    }
}

/// The HTTP receiver of alerts and lineage events (`tests/servers/receiver.py`) on a free
/// loopback port, stopped when dropped.
pub struct Receiver {
    pub url: String,
    child: std::process::Child,
}

impl Receiver {
    /// Starts the receiver with `args` (e.g. `["--fail-first", "2"]`).
    pub fn start(args: &[&str]) -> Receiver {
        use std::io::BufRead;
        let script = workspace_root().join("tests/servers/receiver.py");
        let mut child = Command::new(python())
            .arg(&script)
            .args(["--port", "0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("the receiver printed {line:?}, not its port"));
        Receiver { url: format!("http://127.0.0.1:{port}"), child }
    }

    /// Every POST received so far: path, headers, body, answered.
    pub fn received(&self) -> Vec<Value> {
        let (status, text) = http("GET", &format!("{}/received", self.url), None);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().clone()
    }

    /// The bodies posted to paths starting with `prefix` and answered 2xx.
    pub fn bodies(&self, prefix: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
            .filter(|r| r["answered"].as_u64().is_some_and(|s| (200..300).contains(&s)))
            .map(|r| r["body"].clone())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where tests keep what a person may want to look at afterwards (screenshots): under the
/// target directory, `test-artifacts/<name>/`.
pub fn artifacts(name: &str) -> PathBuf {
    let target =
        std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join("target"));
    let dir = target.join("test-artifacts").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
