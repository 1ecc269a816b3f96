//! NDJSON: one JSON object per line, to columns: text, or typed as the table has them where
//! the values allow it exactly. Nested values stay JSON text.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::Int64Builder;
use arrow::datatypes::DataType;
use inlet_engine::config::NdjsonOptions;
use inlet_engine::source::{BadRecord, DecodeOptions, Decoder, ErrorCode, Format, Input, RawChunk, SourceError};

use crate::json::{Columns, Line, parse_line};
use crate::lines::{BLOCK_BYTES, Lines};
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
            lines: Lines::new(
                without_bom(input.into_read()).map_err(|e| crate::Error::decode(format!("read error: {e}")))?,
                BLOCK_BYTES,
            ),
            options: self.options.clone(),
            line_number: 0,
            rows_per_chunk: options.rows_per_chunk.max(1),
            types: Arc::new(options.types.clone()),
            done: false,
        }))
    }
}

struct NdjsonDecoder {
    lines: Lines,
    options: NdjsonOptions,
    line_number: i64,
    rows_per_chunk: usize,
    /// The types of columns the table knows, by name.
    types: Arc<HashMap<String, DataType>>,
    done: bool,
}

impl Decoder for NdjsonDecoder {
    fn next_chunk(&mut self) -> Result<Option<RawChunk>, SourceError> {
        if self.done {
            return Ok(None);
        }
        let mut columns = Columns::typed(self.types.clone());
        let mut rows = Int64Builder::with_capacity(self.rows_per_chunk);
        let mut bad = Vec::new();
        let mut taken = 0;
        while taken < self.rows_per_chunk {
            let more = self
                .lines
                .next()
                .map_err(|e| crate::Error::decode(format!("read error after line {}: {e}", self.line_number)))?;
            if !more {
                self.done = true;
                break;
            }
            self.line_number += 1;
            let row = self.line_number;
            let bytes = self.lines.line().trim_ascii();
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

#[cfg(test)]
mod tests {
    use inlet_engine::config::OnNewColumns;

    use super::*;
    use crate::typed_check::Table;

    #[test]
    fn typed_decoding_lands_and_quarantines_exactly_what_text_decoding_does() {
        let text = r#"{"id":1,"amount":"12.30","ts":"2024-05-01T10:00:00Z","n":7,"name":"a","extra":{"x":1}}
{"id":2,"amount":"-0.50","ts":"2024-05-01T10:00:00.120Z","n":null,"name":"b"}
{"id":3,"amount":"oops","ts":"2024-05-01T10:00:00Z","n":9}
{"id":"+4","amount":1.5,"ts":"2024-05-01T12:00:00+02:00","n":2147483648,"name":"e"}
{"id":9223372036854775808,"amount":"2.00","ts":"2024-05-01T10:00:00Z","n":11}
[1,2]
{"id":6,"amount":"3.00","ts":"bad","n":12,"name":"h","extra":"y"}
{"id":7,"amount":4,"ts":"2024-05-01T10:00:00.000001Z","n":-13}
{"name":"only a name"}
"#;
        let table = Table {
            columns: &["id", "amount", "ts", "n", "name"],
            hints: &[("id", "bigint"), ("amount", "decimal(18,2)"), ("ts", "timestamp"), ("n", "int")],
            on_new_columns: OnNewColumns::Rescue,
        };
        let typed = table.typed_as_text(&NdjsonFormat::new(NdjsonOptions::default()), text);
        // Chunk 1 keeps id, ts and n typed; chunk 2 none; chunk 3 id and n.
        assert_eq!(typed.typed_columns, 5);
        let rows: Vec<i64> = typed.bad.iter().map(|b| b.0).collect();
        // amount `oops`; then, in the second chunk, the array (found by the decoder) before n
        // over int and id over bigint; ts `bad`.
        assert_eq!(rows, [3, 6, 4, 5, 7], "{:?}", typed.bad);
    }
}
