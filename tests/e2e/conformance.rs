//! Delta conformance through inlet's own read path (`inlet query`): the DAT reader cases at
//! every version they give, and delta-kernel-rs' golden tables at their latest version.
//!
//! The cases live in `../shared/conformance` beside the repository. Under the test command
//! (`INLET_REQUIRE_SERVICES`) a missing folder fails the test; elsewhere it says so and
//! checks nothing. A case inlet cannot read as expected is named in [`GOLDEN_LIMITS`] with
//! the reason; the list is exact, so a case that starts to agree fails until it is taken off.
//! The negative cases must end in an error.

use std::path::{Path, PathBuf};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use inlet_tests::inlet_bin;

/// A folder of `../shared/conformance`, or `None` (a failure under the test command).
fn conformance(relative: &str) -> Option<PathBuf> {
    let root = inlet_tests::workspace_root().join("../shared/conformance").join(relative);
    if root.is_dir() {
        return Some(root);
    }
    assert!(
        std::env::var_os("INLET_REQUIRE_SERVICES").is_none(),
        "{} is missing: the conformance data must sit beside the repository",
        root.display()
    );
    eprintln!("skipped: {} is not there", root.display());
    None
}

/// A lake holding tables copied from the conformance data, queried with the real binary.
struct Lake {
    dir: tempfile::TempDir,
}

impl Lake {
    fn new() -> Lake {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inlet.toml"), "[pipeline]\nname = \"conformance\"\nlake = \"lake\"\n").unwrap();
        Lake { dir }
    }

    /// Copies the Delta table at `from` to `lake/<layer>/<name>`.
    fn add(&self, table: &str, from: &Path) {
        let (layer, name) = table.split_once('.').unwrap();
        inlet_tests::copy_dir(from, &self.dir.path().join("lake").join(layer).join(name));
    }

    /// `SELECT * FROM table` through `inlet query` (at `version`): the rows, or the error.
    fn query(&self, table: &str, version: Option<i64>) -> Result<Vec<RecordBatch>, String> {
        let out_file = self.dir.path().join(format!("{table}.parquet"));
        let sql = format!("SELECT * FROM {table}");
        let mut command = std::process::Command::new(inlet_bin());
        command.args(["query", &sql, "--output", "parquet"]).arg(&out_file).current_dir(self.dir.path());
        if let Some(version) = version {
            command.args(["--as-of", &version.to_string()]);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // A failure is an error inlet reports (exit 1-3), never a crash.
        assert!(matches!(out.status.code(), Some(0..=3)), "{table}: inlet crashed ({:?}): {stderr}", out.status);
        if !out.status.success() {
            return Err(stderr.trim().to_owned());
        }
        Ok(read_parquet(&out_file))
    }
}

fn read_parquet(file: &Path) -> Vec<RecordBatch> {
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Rows as sorted strings over the expected columns, timestamps normalised to UTC microseconds.
fn rows(batches: &[RecordBatch], columns: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        let arrays: Vec<ArrayRef> = columns
            .iter()
            .map(|name| {
                let column = batch.column_by_name(name).unwrap_or_else(|| panic!("column `{name}` missing")).clone();
                match column.data_type() {
                    DataType::Timestamp(_, _) => {
                        cast(&column, &DataType::Timestamp(TimeUnit::Microsecond, None)).unwrap()
                    }
                    _ => column,
                }
            })
            .collect();
        let options = FormatOptions::default().with_null("NULL");
        let formatters: Vec<_> =
            arrays.iter().map(|a| ArrayFormatter::try_new(a.as_ref(), &options).unwrap()).collect();
        for row in 0..batch.num_rows() {
            let fields: Vec<String> = formatters.iter().map(|f| f.value(row).to_string()).collect();
            out.push(fields.join("|"));
        }
    }
    out.sort();
    out
}

fn expected_batches(dir: &Path) -> Vec<RecordBatch> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    files.iter().flat_map(|file| read_parquet(file)).collect()
}

/// Whether `got` holds the rows of `want` (over `want`'s columns): `Err` says how not.
fn agrees(got: &[RecordBatch], want: &[RecordBatch]) -> Result<(), String> {
    let columns: Vec<String> =
        want.first().map(|b| b.schema().fields().iter().map(|f| f.name().clone()).collect()).unwrap_or_default();
    if columns.is_empty() {
        let rows = got.iter().map(RecordBatch::num_rows).sum::<usize>();
        return if rows == 0 { Ok(()) } else { Err(format!("{rows} rows where none are expected")) };
    }
    if let Some(missing) = columns.iter().find(|c| got.first().is_some_and(|b| b.column_by_name(c).is_none())) {
        return Err(format!("no column `{missing}`"));
    }
    let (got, want) = (rows(got, &columns), rows(want, &columns));
    if got == want {
        Ok(())
    } else {
        let first = got.iter().zip(&want).find(|(g, w)| g != w);
        Err(format!("{} rows, {} expected; first difference: {first:?}", got.len(), want.len()))
    }
}

#[test]
fn dat_reader_cases_read_identically_through_inlet_query() {
    let Some(root) = conformance("dat/reader_tests/generated") else { return };
    let lake = Lake::new();
    let mut checked = 0;
    let mut cases: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let table = format!("dat.{name}");
        lake.add(&table, &case.join("delta"));
        for expected in std::fs::read_dir(case.join("expected")).unwrap().map(|e| e.unwrap().path()) {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(expected.join("table_version_metadata.json")).unwrap()).unwrap();
            let version = meta["version"].as_i64().unwrap();
            let want = expected_batches(&expected.join("table_content"));
            let got = lake.query(&table, Some(version)).unwrap_or_else(|e| panic!("{name} v{version}: {e}"));
            if let Err(why) = agrees(&got, &want) {
                panic!("{name} at {}: {why}", expected.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 19, "only {checked} (case, version) pairs found");
}

/// Golden tables inlet (delta-rs) does not read as their expected rows say, and why.
const GOLDEN_LIMITS: &[(&str, &str)] = &[
    (
        "basic-with-vacuum-protocol-check-feature",
        "delta-rs 1.1 refuses the reader feature `vacuumProtocolCheck` (Unsupported table features required)",
    ),
    (
        "data-reader-partition-values",
        "a timestamp partition value written without a zone by a session in another time zone: read as UTC, expected in the writer's zone (DuckDB disagrees too)",
    ),
];

/// Golden tables a reader must refuse (the data's README): inlet must end in an error.
fn negative(case: &str) -> bool {
    ["no-delta-log-folder", "versions-not-contiguous", "deltalog-invalid-protocol-version"].contains(&case)
        || case.starts_with("deltalog-state-reconstruction-")
}

/// Golden tables that are not a plain read of rows (the data's README): no expected rows,
/// or absolute paths to elsewhere. Read or refused, inlet must not crash.
fn not_a_read(case: &str) -> bool {
    [
        "checkpoint",
        "deltalog-commit-info",
        "update-deleted-directory",
        "delete-re-add-same-file-different-transactions",
        "hive",
        "data-reader-absolute-paths-escaped-chars",
        "log-replay-special-characters-b",
    ]
    .contains(&case)
        || case.starts_with("canonicalized-paths-")
}

#[test]
fn kernel_golden_tables_read_as_expected_through_inlet_query() {
    let Some(archives) = conformance("kernel-golden") else { return };
    let unpacked = tempfile::tempdir().unwrap();
    let mut tarballs: Vec<PathBuf> = std::fs::read_dir(&archives)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .collect();
    tarballs.sort();
    assert_eq!(tarballs.len(), 86, "golden tables in {}", archives.display());
    for tarball in &tarballs {
        // (GNU tar warns of the archives' SCHILY.fflags; only a failure is shown.)
        let out = std::process::Command::new("tar")
            .args(["--zstd", "-xf"])
            .arg(tarball)
            .arg("-C")
            .arg(unpacked.path())
            .output()
            .expect("tar (with zstd, which scripts/test.sh installs)");
        assert!(out.status.success(), "unpacking {}: {}", tarball.display(), String::from_utf8_lossy(&out.stderr));
    }
    let lake = Lake::new();
    let mut agreed = Vec::new();
    let mut limited = Vec::new();
    let mut refused = Vec::new();
    let mut failures = Vec::new();
    for tarball in &tarballs {
        let case = tarball.file_name().unwrap().to_string_lossy().trim_end_matches(".tar.zst").to_owned();
        let dir = unpacked.path().join(&case);
        let table = format!(
            "golden.g_{}",
            case.to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_").replace("__", "_")
        );
        let special = negative(&case) || not_a_read(&case);
        if !dir.join("delta").is_dir() || (!special && !dir.join("expected").is_dir()) {
            assert!(special, "{case}: no delta/ or expected/ folder");
            if negative(&case) {
                refused.push(case);
            }
            continue;
        }
        lake.add(&table, &dir.join("delta"));
        let outcome = lake.query(&table, None);
        if negative(&case) {
            match outcome {
                Ok(_) => failures.push(format!("{case}: read, though a reader must refuse it")),
                Err(_) => refused.push(case),
            }
            continue;
        }
        if special {
            // Read or refused: either way a clean exit (checked in `query`), named here.
            let said =
                outcome.as_ref().map_or_else(|e| e.lines().last().unwrap_or_default().to_owned(), |_| "read".into());
            eprintln!("golden {case} (not a plain read): {}", said.chars().take(240).collect::<String>());
            continue;
        }
        let outcome = outcome.and_then(|got| agrees(&got, &expected_batches(&dir.join("expected"))));
        match (outcome, GOLDEN_LIMITS.iter().find(|(c, _)| *c == case)) {
            (Ok(()), None) => agreed.push(case),
            (Ok(()), Some(_)) => failures.push(format!("{case} now agrees: take it off GOLDEN_LIMITS")),
            (Err(why), Some((_, reason))) => {
                eprintln!("golden {case}: not read as expected ({reason}): {why}");
                limited.push(case);
            }
            (Err(why), None) => failures.push(format!("{case}: {why}")),
        }
    }
    assert!(failures.is_empty(), "{} golden tables disagree:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(agreed.len(), 66, "golden tables that agree: {agreed:?}");
    assert_eq!(limited.len(), GOLDEN_LIMITS.len(), "named limits met: {limited:?}");
    assert_eq!(refused.len(), 7, "negative cases refused: {refused:?}");
    eprintln!("golden: {} agree, {} named limits, {} refused", agreed.len(), limited.len(), refused.len());
}
