//! Golden tests of the text decoders: every `testdata/golden/<case>.<csv|ndjson>` is decoded
//! (with options from `<case>.opts.toml` when present) and rendered as text, which must
//! equal `<case>.expected`. `INLET_BLESS=1` rewrites the expected files; review the diff.

use std::fmt::Write as _;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use arrow::array::Array;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use inlet_engine::config::{CsvOptions, NdjsonOptions};
use inlet_engine::schema::ColumnType;
use inlet_engine::source::{DecodeOptions, Format, Input};
use serde::Deserialize;

use crate::csv::CsvFormat;
use crate::ndjson::NdjsonFormat;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    csv: CsvOptions,
    #[serde(default)]
    ndjson: NdjsonOptions,
    /// Column types the table has (as in a source's `schema`): a decoder may type them.
    #[serde(default)]
    types: std::collections::BTreeMap<String, String>,
}

fn render(format: &dyn Format, bytes: Vec<u8>, types: &std::collections::BTreeMap<String, String>) -> String {
    let mut out = String::new();
    // Small chunks, so chunk boundaries are exercised too.
    let mut options = DecodeOptions::text(2);
    for (name, text) in types {
        options.types.insert(name.clone(), ColumnType::parse(text).unwrap().0);
    }
    let mut decoder = match format.decoder(Input::Stream(Box::new(Cursor::new(bytes))), &options) {
        Ok(decoder) => decoder,
        Err(err) => return format!("unreadable: {err}\n"),
    };
    let mut chunks = 0;
    loop {
        match decoder.next_chunk() {
            Ok(None) => break,
            Err(err) => {
                let _ = writeln!(out, "unreadable: {err}");
                break;
            }
            Ok(Some(chunk)) => {
                chunks += 1;
                let schema = chunk.batch.schema();
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                let _ = writeln!(out, "chunk {chunks} columns {names:?}");
                let typed: Vec<String> = schema
                    .fields()
                    .iter()
                    .filter(|f| f.data_type() != &DataType::Utf8)
                    .map(|f| format!("{}: {}", f.name(), f.data_type()))
                    .collect();
                if !typed.is_empty() {
                    let _ = writeln!(out, "  typed {typed:?}");
                }
                let formatters: Vec<ArrayFormatter<'_>> = chunk
                    .batch
                    .columns()
                    .iter()
                    .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).unwrap())
                    .collect();
                for row in 0..chunk.batch.num_rows() {
                    let values: Vec<Option<String>> = chunk
                        .batch
                        .columns()
                        .iter()
                        .zip(&formatters)
                        .map(|(c, f)| c.is_valid(row).then(|| f.value(row).to_string()))
                        .collect();
                    let _ = writeln!(out, "  row {} {values:?}", chunk.rows.value(row));
                }
                for bad in &chunk.bad {
                    let _ =
                        writeln!(out, "  bad {} {}: {} | raw {:?}", bad.row, bad.code.as_str(), bad.message, bad.raw);
                }
            }
        }
    }
    if chunks == 0 {
        out.push_str("no chunks\n");
    }
    out
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv" || e == "ndjson"))
        .collect();
    cases.sort();
    cases
}

#[test]
fn decoders_match_golden_output() {
    let bless = std::env::var_os("INLET_BLESS").is_some();
    let mut failures = Vec::new();
    let cases = cases();
    assert!(cases.len() >= 20, "golden cases missing");
    for case in cases {
        let options_path = case.with_extension("opts.toml");
        let options: Options = match std::fs::read_to_string(&options_path) {
            Ok(text) => toml::from_str(&text).unwrap(),
            Err(_) => Options::default(),
        };
        let bytes = std::fs::read(&case).unwrap();
        let rendered = if case.extension().is_some_and(|e| e == "csv") {
            render(&CsvFormat::new(options.csv), bytes, &options.types)
        } else {
            render(&NdjsonFormat::new(options.ndjson), bytes, &options.types)
        };
        let expected_path = case.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &rendered).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != rendered {
            failures.push(format!("{}:\n--- expected\n{expected}--- got\n{rendered}", case.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
