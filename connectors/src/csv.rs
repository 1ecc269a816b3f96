//! CSV: records to columns, with field-count and encoding errors as bad records. Columns
//! whose table type is known are typed as they are read where their text allows it
//! (`inlet_engine::text_cast::exact`); the rest are text.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use inlet_engine::config::{CsvOptions, Encoding};
use inlet_engine::source::{
    BadRecord, DecodeOptions, Decoder, ErrorCode, Format, Input, RawChunk, RawStyle, SourceError,
};
use inlet_engine::text_cast::exact::ChunkColumn;

use crate::text::{decode, without_bom};

mod records;
mod scan;

use records::{Record, Records};

/// Fields of every record of `input` as the decoder finds them: the SIMD scanner where
/// `options` allow it, the `csv` crate otherwise. The bench sets it beside the csv crate's floor.
pub fn count_fields(input: Box<dyn std::io::Read + Send>, options: &CsvOptions) -> Result<u64, csv::Error> {
    let mut records = Records::new(without_bom(input)?, options);
    let mut fields = 0;
    while records.read()? {
        fields += records.record().len() as u64;
    }
    Ok(fields)
}

/// The CSV format with its options.
pub struct CsvFormat {
    options: CsvOptions,
}

impl CsvFormat {
    pub fn new(options: CsvOptions) -> Self {
        CsvFormat { options }
    }
}

fn ascii(c: char) -> u8 {
    u8::try_from(c).unwrap_or(b'?')
}

impl Format for CsvFormat {
    fn decoder(&self, input: Input, options: &DecodeOptions) -> Result<Box<dyn Decoder>, SourceError> {
        let reader = without_bom(input.into_read()).map_err(|e| crate::Error::decode(format!("read error: {e}")))?;
        Ok(Box::new(CsvDecoder {
            records: Records::new(reader, &self.options),
            options: self.options.clone(),
            names: None,
            records_read: 0,
            rows_per_chunk: options.rows_per_chunk.max(1),
            types: options.types.clone(),
            value_bytes: Vec::new(),
            chunks: 0,
            done: false,
        }))
    }
}

struct CsvDecoder {
    records: Records,
    options: CsvOptions,
    /// Column names, from the header or `_c0`, `_c1`, ... once the first record is read.
    names: Option<Vec<String>>,
    records_read: i64,
    rows_per_chunk: usize,
    /// The types of columns the table knows, by name.
    types: HashMap<String, DataType>,
    /// Bytes of text per column in the last chunk: the next chunk's buffers start that big.
    value_bytes: Vec<usize>,
    chunks: usize,
    done: bool,
}

impl CsvDecoder {
    fn read(&mut self) -> Result<bool, SourceError> {
        self.records.read().map_err(|e| match e.kind() {
            csv::ErrorKind::Io(io) => {
                crate::Error::decode(format!("read error after record {}: {io}", self.records_read))
            }
            _ => crate::Error::decode(format!("CSV error after record {}: {e}", self.records_read)),
        })
    }

    /// Reads the header (or peeks the first record for its width); false on an empty file.
    fn start(&mut self) -> Result<bool, SourceError> {
        if !self.read()? {
            return Ok(false);
        }
        let record = self.records.record();
        if self.options.header {
            let mut names: Vec<String> = Vec::with_capacity(record.len());
            for (i, field) in record.iter().enumerate() {
                let name = decode(field, self.options.encoding)
                    .map_or_else(|_| String::from_utf8_lossy(field).into_owned(), |s| s.into_owned());
                let mut name = if name.is_empty() { format!("_c{i}") } else { name };
                if names.contains(&name) {
                    name = format!("{name}_{i}");
                }
                names.push(name);
            }
            self.names = Some(names);
        } else {
            self.names = Some((0..record.len()).map(|i| format!("_c{i}")).collect());
        }
        Ok(true)
    }
}

/// A record as CSV text again (fields quoted where they need it), for quarantine.
fn raw(record: &Record<'_>, options: &CsvOptions) -> String {
    let delimiter = char::from(ascii(options.delimiter));
    let quote = char::from(ascii(options.quote));
    let fields: Vec<String> = record
        .iter()
        .map(|f| {
            let text = match options.encoding {
                Encoding::Latin1 => f.iter().map(|&b| char::from(b)).collect(),
                Encoding::Utf8 => String::from_utf8_lossy(f).into_owned(),
            };
            if text.contains([delimiter, quote, '\n', '\r']) {
                format!("{quote}{}{quote}", text.replace(quote, &format!("{quote}{quote}")))
            } else {
                text
            }
        })
        .collect();
    fields.join(&delimiter.to_string())
}

impl Decoder for CsvDecoder {
    fn next_chunk(&mut self) -> Result<Option<RawChunk>, SourceError> {
        if self.done {
            return Ok(None);
        }
        let mut pending_first = false;
        if self.names.is_none() {
            if !self.start()? {
                self.done = true;
                return Ok(None);
            }
            pending_first = !self.options.header;
        }
        let names = self.names.clone().unwrap_or_default();
        let width = names.len();
        let mut columns: Vec<ChunkColumn> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let bytes = self.value_bytes.get(i).map_or(self.rows_per_chunk * 8, |b| b + b / 8);
                ChunkColumn::new(self.types.get(name), self.rows_per_chunk, bytes)
            })
            .collect();
        let mut rows = Int64Builder::with_capacity(self.rows_per_chunk);
        let mut bad = Vec::new();
        let mut taken = 0;
        while taken < self.rows_per_chunk {
            if !pending_first && !self.read()? {
                self.done = true;
                break;
            }
            pending_first = false;
            self.records_read += 1;
            taken += 1;
            let row = self.records_read;
            let record = self.records.record();
            if record.len() != width {
                bad.push(BadRecord {
                    row,
                    code: ErrorCode::FieldCount,
                    message: format!("expected {width} fields, found {}", record.len()),
                    raw: Some(raw(&record, &self.options)),
                });
                continue;
            }
            // Check the whole record before appending any field, so a bad record adds nothing:
            // valid UTF-8, and, for joined values, no field ending inside a character.
            let text = match self.options.encoding {
                Encoding::Utf8 => std::str::from_utf8(record.bytes()).ok().filter(|text| {
                    !record.joined()
                        || (0..record.len())
                            .filter_map(|i| record.range(i))
                            .all(|range| text.is_char_boundary(range.start) && text.is_char_boundary(range.end))
                }),
                Encoding::Latin1 => None,
            };
            if text.is_none() && self.options.encoding == Encoding::Utf8 {
                let message = record
                    .iter()
                    .zip(&names)
                    .find_map(|(field, name)| {
                        decode(field, self.options.encoding).err().map(|m| format!("column `{name}`: {m}"))
                    })
                    .unwrap_or_else(|| "invalid UTF-8".to_owned());
                bad.push(BadRecord { row, code: ErrorCode::Encoding, message, raw: Some(raw(&record, &self.options)) });
                continue;
            }
            for (i, builder) in columns.iter_mut().enumerate() {
                let field = record.get(i).unwrap_or_default();
                if self.options.null_values.iter().any(|n| n.as_bytes() == field) {
                    builder.append_null();
                    continue;
                }
                // UTF-8: the record was validated once, slice it; Latin-1: transcode the field.
                let value = match (text, record.range(i)) {
                    (Some(text), Some(range)) => text.get(range).map(std::borrow::Cow::Borrowed),
                    _ => decode(field, self.options.encoding).ok(),
                };
                match value {
                    Some(value) => builder.append(&value),
                    None => builder.append_null(),
                }
            }
            rows.append_value(row);
        }
        if taken == 0 && self.chunks > 0 {
            return Ok(None);
        }
        self.chunks += 1;
        self.value_bytes = columns.iter().map(ChunkColumn::text_bytes).collect();
        let arrays: Vec<ArrayRef> = columns.iter_mut().map(ChunkColumn::finish).collect();
        let fields: Vec<Field> =
            names.iter().zip(&arrays).map(|(n, a)| Field::new(n, a.data_type().clone(), true)).collect();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| crate::Error::decode(e.to_string()))?;
        Ok(Some(RawChunk {
            batch,
            rows: rows.finish(),
            bad,
            text: true,
            raw_style: RawStyle::Csv { delimiter: ascii(self.options.delimiter), quote: ascii(self.options.quote) },
        }))
    }
}

#[cfg(test)]
mod tests {
    use inlet_engine::config::OnNewColumns;

    use super::*;
    use crate::typed_check::Table;

    #[test]
    fn a_character_split_between_two_fields_is_an_encoding_error_whichever_reader_reads_it() {
        // `\xc3` ends one field and `\xa9` starts the next: each half of `é` alone. Joined
        // (quotes taken out, or by the csv crate after a `\r`) they would read as one `é`.
        let records: [&[u8]; 3] = [b"q\xc3,\xa9\n", b"\"q\"\"\xc3\",\xa9\n", b"q\xc3,\xa9\r\n"];
        for record in records {
            let text = [&b"a,b\nok,1\n"[..], record, b"fine,2\n"].concat();
            let input = Input::Stream(Box::new(std::io::Cursor::new(text)));
            let mut decoder = CsvFormat::new(CsvOptions::default()).decoder(input, &DecodeOptions::text(10)).unwrap();
            let chunk = decoder.next_chunk().unwrap().unwrap();
            let bad: Vec<(i64, ErrorCode)> = chunk.bad.iter().map(|b| (b.row, b.code)).collect();
            assert_eq!(bad, [(2, ErrorCode::Encoding)], "{record:?}: {:?}", chunk.bad);
            assert!(chunk.bad[0].message.starts_with("column `a`: invalid UTF-8"), "{}", chunk.bad[0].message);
            assert_eq!(chunk.rows.values(), &[1, 3], "{record:?}");
        }
    }

    #[test]
    fn typed_decoding_lands_and_quarantines_exactly_what_text_decoding_does() {
        let text = "id,amount,ts,day,n,name,extra\n\
            1,12.30,2024-05-01T10:00:00Z,2024-05-01,7,a,x\n\
            2,-0.50,2024-05-01T10:00:00.120Z,,8,\"b, \"\"c\"\"\",\n\
            3,oops,2024-05-01T10:00:00Z,2024-05-02,9,d,y\n\
            +4,1.00,2024-05-01T12:00:00+02:00,2024-05-03,10,e,z\n\
            5,2.00,2024-05-01T10:00:00Z,2024-05-32,11,f,\n\
            6,3.00,2024-05-01T10:00:00Z,2024-05-05,2147483648,g,w\n\
            7,3.5,2024-05-01 10:00:00Z,2024-05-06,12,\"h\nh\",v\n\
            8,4.00,2024-05-01T10:00:00Z,2024-05-07,13\n\
            9,5.00,2024-05-01T10:00:00.000001Z,2024-05-08,14,i,u\n";
        for on_new_columns in [OnNewColumns::Rescue, OnNewColumns::Add, OnNewColumns::Ignore] {
            // A table with every column but `extra`, so `extra` is rescued, added or dropped.
            let table = Table {
                columns: &["id", "amount", "ts", "day", "n", "name"],
                hints: &[
                    ("id", "bigint"),
                    ("amount", "decimal(18,2)"),
                    ("ts", "timestamp"),
                    ("day", "date"),
                    ("n", "int"),
                ],
                on_new_columns,
            };
            let typed = table.typed_as_text(&CsvFormat::new(CsvOptions::default()), text);
            // Chunk 1 keeps id, ts, day and n typed; chunk 2 amount; chunk 3 id, day and n.
            assert_eq!(typed.typed_columns, 8, "{on_new_columns:?}");
            // Rows 3 (amount), 5 (day), 6 (n) do not parse; row 8 has too few fields.
            let rows: Vec<i64> = typed.bad.iter().map(|b| b.0).collect();
            assert_eq!(rows, [3, 5, 6, 8], "{on_new_columns:?}");
            assert_eq!(typed.bad[0].3.as_deref(), Some("3,oops,2024-05-01T10:00:00Z,2024-05-02,9,d,y"));
        }
    }
}
