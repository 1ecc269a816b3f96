//! NDJSON: one JSON object per line, to text columns. Nested values stay JSON text.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use inlet_engine::config::NdjsonOptions;
use inlet_engine::source::{BadRecord, Decoder, ErrorCode, FileError, Format, Input, RawChunk, RawStyle};
use serde_json::Value;

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
    fn decoder(&self, input: Input, rows_per_chunk: usize) -> Result<Box<dyn Decoder>, FileError> {
        Ok(Box::new(NdjsonDecoder {
            reader: without_bom(input.into_read())?,
            options: self.options.clone(),
            line: Vec::new(),
            line_number: 0,
            rows_per_chunk: rows_per_chunk.max(1),
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

/// Columns under construction: values by column, in order of first appearance.
#[derive(Default)]
struct Columns {
    names: Vec<String>,
    index: HashMap<String, usize>,
    values: Vec<Vec<Option<String>>>,
    rows: usize,
}

impl Columns {
    fn push_row(&mut self, object: serde_json::Map<String, Value>) {
        for (key, value) in object {
            let column = match self.index.get(&key) {
                Some(&i) => i,
                None => {
                    self.index.insert(key.clone(), self.names.len());
                    self.names.push(key);
                    self.values.push(vec![None; self.rows]);
                    self.names.len() - 1
                }
            };
            let text = match value {
                Value::Null => None,
                Value::String(s) => Some(s),
                Value::Bool(b) => Some(b.to_string()),
                Value::Number(n) => Some(n.to_string()),
                nested @ (Value::Array(_) | Value::Object(_)) => Some(nested.to_string()),
            };
            let values = &mut self.values[column];
            values.resize(self.rows, None);
            values.push(text);
        }
        self.rows += 1;
        for values in &mut self.values {
            values.resize(self.rows, None);
        }
    }
}

impl Decoder for NdjsonDecoder {
    fn next_chunk(&mut self) -> Result<Option<RawChunk>, FileError> {
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
                .map_err(|e| FileError::new(format!("read error after line {}: {e}", self.line_number)))?;
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
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(object)) => {
                    columns.push_row(object);
                    rows.append_value(row);
                }
                Ok(other) => bad.push(BadRecord {
                    row,
                    code: ErrorCode::JsonShape,
                    message: format!("expected a JSON object, found {}", kind(&other)),
                    raw: Some(text.into_owned()),
                }),
                Err(err) => bad.push(BadRecord {
                    row,
                    code: ErrorCode::JsonSyntax,
                    message: format!("{err}"),
                    raw: Some(text.into_owned()),
                }),
            }
        }
        if taken == 0 {
            return Ok(None);
        }
        let fields: Vec<Field> = columns.names.iter().map(|n| Field::new(n, DataType::Utf8, true)).collect();
        let arrays: Vec<ArrayRef> =
            columns.values.into_iter().map(|v| Arc::new(StringArray::from(v)) as ArrayRef).collect();
        let rows = rows.finish();
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
        let batch = RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)
            .map_err(|e| FileError::new(e.to_string()))?;
        Ok(Some(RawChunk { batch, rows, bad, text: true, raw_style: RawStyle::Json }))
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
