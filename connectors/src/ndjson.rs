//! NDJSON: one JSON object per line, to text columns. Nested values stay JSON text.

use std::io::BufRead;

use arrow::array::Int64Builder;
use inlet_engine::config::NdjsonOptions;
use inlet_engine::source::{BadRecord, DecodeOptions, Decoder, ErrorCode, Format, Input, RawChunk, SourceError};

use crate::json::{Columns, Line, parse_line};
use crate::text::{decode, without_bom};

/// The NDJSON format with its options.
pub struct NdjsonFormat {
    options: NdjsonOptions,
}

impl NdjsonFormat {
    pub fn new(options: NdjsonOptions) -> Self {
        NdjsonFormat { options }
    }
}

impl Format for NdjsonFormat {
    fn decoder(&self, input: Input, options: &DecodeOptions) -> Result<Box<dyn Decoder>, SourceError> {
        Ok(Box::new(NdjsonDecoder {
            reader: without_bom(input.into_read()).map_err(|e| crate::Error::decode(format!("read error: {e}")))?,
            options: self.options.clone(),
            line: Vec::new(),
            line_number: 0,
            rows_per_chunk: options.rows_per_chunk.max(1),
            done: false,
        }))
    }
}

struct NdjsonDecoder {
    reader: std::io::BufReader<Box<dyn std::io::Read + Send>>,
    options: NdjsonOptions,
    line: Vec<u8>,
    line_number: i64,
    rows_per_chunk: usize,
    done: bool,
}

impl Decoder for NdjsonDecoder {
    fn next_chunk(&mut self) -> Result<Option<RawChunk>, SourceError> {
        if self.done {
            return Ok(None);
        }
        let mut columns = Columns::default();
        let mut rows = Int64Builder::with_capacity(self.rows_per_chunk);
        let mut bad = Vec::new();
        let mut taken = 0;
        while taken < self.rows_per_chunk {
            self.line.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|e| crate::Error::decode(format!("read error after line {}: {e}", self.line_number)))?;
            if read == 0 {
                self.done = true;
                break;
            }
            self.line_number += 1;
            let row = self.line_number;
            let bytes = self.line.trim_ascii();
            if bytes.is_empty() {
                continue;
            }
            taken += 1;
            let text = match decode(bytes, self.options.encoding) {
                Ok(text) => text,
                Err(message) => {
                    bad.push(BadRecord {
                        row,
                        code: ErrorCode::Encoding,
                        message,
                        raw: Some(String::from_utf8_lossy(bytes).into_owned()),
                    });
                    continue;
                }
            };
            match parse_line(&text, &columns) {
                Ok(Line::Object(cells)) => {
                    columns.push_row(cells);
                    rows.append_value(row);
                }
                Ok(Line::Not(kind)) => bad.push(BadRecord {
                    row,
                    code: ErrorCode::JsonShape,
                    message: format!("expected a JSON object, found {kind}"),
                    raw: Some(text.to_string()),
                }),
                Err(err) => bad.push(BadRecord {
                    row,
                    code: ErrorCode::JsonSyntax,
                    message: format!("{err}"),
                    raw: Some(text.to_string()),
                }),
            }
        }
        if taken == 0 {
            return Ok(None);
        }
        Ok(Some(columns.finish(rows.finish(), bad).map_err(crate::Error::decode)?))
    }
}
