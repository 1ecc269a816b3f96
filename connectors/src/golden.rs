//! Golden tests of the text decoders: every `testdata/golden/<case>.<csv|ndjson>` is decoded
//! (with options from `<case>.opts.toml` when present) and rendered as text, which must
//! equal `<case>.expected`. `INLET_BLESS=1` rewrites the expected files; review the diff.

use std::fmt::Write as _;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use arrow::array::{Array, StringArray};
use inlet_engine::config::{CsvOptions, NdjsonOptions};
use inlet_engine::source::{Format, Input};
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
}

fn render(format: &dyn Format, bytes: Vec<u8>) -> String {
    let mut out = String::new();
    // Small chunks, so chunk boundaries are exercised too.
    let mut decoder = match format.decoder(Input::Stream(Box::new(Cursor::new(bytes))), 2) {
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
                for row in 0..chunk.batch.num_rows() {
                    let values: Vec<Option<&str>> = chunk
                        .batch
                        .columns()
                        .iter()
                        .map(|c| {
                            c.as_any().downcast_ref::<StringArray>().and_then(|s| s.is_valid(row).then(|| s.value(row)))
                        })
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
            render(&CsvFormat::new(options.csv), bytes)
        } else {
            render(&NdjsonFormat::new(options.ndjson), bytes)
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
