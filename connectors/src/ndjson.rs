//! NDJSON: one JSON object per line, to text columns. Nested values stay JSON text.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use inlet_engine::config::NdjsonOptions;
use inlet_engine::source::{BadRecord, Decoder, ErrorCode, FileError, Format, Input, RawChunk, RawStyle};
use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserializer as _, MapAccess, SeqAccess, Visitor};
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

/// Columns under construction: text by column, in order of first appearance in the chunk.
#[derive(Default)]
struct Columns {
    names: Vec<String>,
    index: HashMap<String, usize>,
    builders: Vec<StringBuilder>,
    rows: usize,
}

impl Columns {
    /// The column of `key`, if the chunk has it. `position` is the key's place in its
    /// object: records usually repeat one key order, so that column is tried before hashing.
    fn find(&self, key: &str, position: usize) -> Option<usize> {
        if self.names.get(position).is_some_and(|name| name == key) {
            return Some(position);
        }
        self.index.get(key).copied()
    }

    /// Appends one record's values (the last of a repeated key wins), first making the
    /// columns of keys the chunk has not seen (null in the rows before). A record that
    /// fails to parse never gets here, so it adds no column.
    fn push_row(&mut self, cells: Vec<(Key<'_>, Option<Cow<'_, str>>)>) {
        let mut slots: Vec<Option<Cow<'_, str>>> = vec![None; self.builders.len()];
        for (key, cell) in cells {
            let column = match key {
                Key::Known(column) => column,
                Key::New(name) => match self.index.get(name.as_ref()) {
                    Some(&column) => column,
                    None => {
                        let column = self.names.len();
                        self.index.insert(name.clone().into_owned(), column);
                        self.names.push(name.into_owned());
                        let mut builder = StringBuilder::new();
                        builder.append_nulls(self.rows);
                        self.builders.push(builder);
                        slots.push(None);
                        column
                    }
                },
            };
            if let Some(slot) = slots.get_mut(column) {
                *slot = cell;
            }
        }
        for (builder, slot) in self.builders.iter_mut().zip(slots) {
            builder.append_option(slot);
        }
        self.rows += 1;
    }
}

/// A key of a record: a column of the chunk, or a name it has not seen yet.
enum Key<'de> {
    Known(usize),
    New(Cow<'de, str>),
}

/// What one line holds: an object's values by column, or the kind of JSON it is instead.
enum Line<'de> {
    Object(Vec<(Key<'de>, Option<Cow<'de, str>>)>),
    Not(&'static str),
}

/// Visits a line's top-level JSON value, finding the columns of an object's keys.
struct LineVisitor<'a> {
    columns: &'a Columns,
}

impl<'de> Visitor<'de> for LineVisitor<'_> {
    type Value = Line<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut cells = Vec::with_capacity(self.columns.names.len());
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let key = match self.columns.find(&key, cells.len()) {
                Some(column) => Key::Known(column),
                None => Key::New(key),
            };
            cells.push((key, map.next_value::<Cell<'de>>()?.0));
        }
        Ok(Line::Object(cells))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // Parsed in full, not skipped: skipping leaves out checks (number range, surrogates,
        // depth), and a broken array is a syntax error, not a shape one.
        while seq.next_element::<Value>()?.is_some() {}
        Ok(Line::Not("an array"))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Line::Not("null"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Line::Not("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Line::Not("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Line::Not("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Line::Not("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Line::Not("a string"))
    }
}

/// One value as column text: strings as they are (borrowed from the line when they have no
/// escapes), numbers and booleans as JSON writes them, nested values as compact JSON, null
/// as null.
struct Cell<'de>(Option<Cow<'de, str>>);

impl<'de> Deserialize<'de> for Cell<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CellVisitor)
    }
}

struct CellVisitor;

impl<'de> Visitor<'de> for CellVisitor {
    type Value = Cell<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Cell(None))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Cell(Some(Cow::Borrowed(if v { "true" } else { "false" }))))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Cell(Some(Cow::Owned(v.to_string()))))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Cell(Some(Cow::Owned(v.to_string()))))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Cell(serde_json::Number::from_f64(v).map(|n| Cow::Owned(n.to_string()))))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cell(Some(Cow::Borrowed(v))))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cell(Some(Cow::Owned(v.to_owned()))))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cell(Some(Cow::Owned(v))))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let nested = Value::deserialize(MapAccessDeserializer::new(map))?;
        Ok(Cell(Some(Cow::Owned(nested.to_string()))))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let nested = Value::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok(Cell(Some(Cow::Owned(nested.to_string()))))
    }
}

/// Parses one line: its cells, the kind of a non-object, or the syntax error.
fn parse_line<'de>(text: &'de str, columns: &Columns) -> serde_json::Result<Line<'de>> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let line = deserializer.deserialize_any(LineVisitor { columns })?;
    deserializer.end()?;
    Ok(line)
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
        let fields: Vec<Field> = columns.names.iter().map(|n| Field::new(n, DataType::Utf8, true)).collect();
        let arrays: Vec<ArrayRef> = columns.builders.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
        let rows = rows.finish();
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
        let batch = RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)
            .map_err(|e| FileError::new(e.to_string()))?;
        Ok(Some(RawChunk { batch, rows, bad, text: true, raw_style: RawStyle::Json }))
    }
}
