//! Delta conformance: the DAT reader cases read through inlet's own table reader.
//!
//! The cases live in `../shared/conformance/dat` beside the repository; when that folder is
//! not there the test says so and checks nothing else.

use std::path::{Path, PathBuf};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use inlet_engine::table::Table;

fn dat_root() -> Option<PathBuf> {
    let root = inlet_tests::workspace_root().join("../shared/conformance/dat/reader_tests/generated");
    root.is_dir().then_some(root)
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
    let mut batches = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    for file in files {
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
                .unwrap()
                .build()
                .unwrap();
        batches.extend(reader.map(Result::unwrap));
    }
    batches
}

#[test]
fn dat_reader_cases_read_identically() {
    let Some(root) = dat_root() else {
        eprintln!("skipped: ../shared/conformance/dat is not there");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut checked = 0;
    let mut cases: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        for expected in std::fs::read_dir(case.join("expected")).unwrap().map(|e| e.unwrap().path()) {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(expected.join("table_version_metadata.json")).unwrap()).unwrap();
            let version = meta["version"].as_i64().unwrap();
            let want = expected_batches(&expected.join("table_content"));
            let url = url::Url::from_directory_path(std::path::absolute(case.join("delta")).unwrap()).unwrap();
            let got = runtime.block_on(async {
                let mut table = Table::open(&name, url).await.unwrap();
                table.load_version(version).await.unwrap();
                assert_eq!(table.version(), Some(version));
                table.read_all().await.unwrap_or_else(|e| panic!("{name} v{version}: {e}"))
            });
            let columns: Vec<String> = want
                .first()
                .map(|b| b.schema().fields().iter().map(|f| f.name().clone()).collect())
                .unwrap_or_default();
            if columns.is_empty() {
                assert_eq!(got.iter().map(RecordBatch::num_rows).sum::<usize>(), 0, "{name} v{version}");
            } else {
                assert_eq!(rows(&got, &columns), rows(&want, &columns), "{name} at {}", expected.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 19, "only {checked} (case, version) pairs found");
}
