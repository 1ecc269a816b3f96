//! The check the text decoders' typed columns are held to (tests only): a file decoded with
//! the table's types and decoded as text conform to the same rows and quarantine the same
//! records, raw text and messages included.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Mutex;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use inlet_engine::config::OnNewColumns;
use inlet_engine::conform::{ChunkOrigin, ConformSpec, TableColumns, conform};
use inlet_engine::schema::{ColumnType, Provenance};
use inlet_engine::source::{DecodeOptions, Format, Input};

/// A table with `columns` (typed by `hints`, text otherwise) that a file is conformed to.
pub(crate) struct Table<'a> {
    pub columns: &'a [&'a str],
    pub hints: &'a [(&'a str, &'a str)],
    pub on_new_columns: OnNewColumns,
}

/// What one decoding of a file gave: the conformed batches, the quarantined records as
/// (row, code, message, raw), and how many columns of the decoded chunks came typed.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub batches: Vec<RecordBatch>,
    pub bad: Vec<(i64, String, String, Option<String>)>,
    pub typed_columns: usize,
}

impl Table<'_> {
    /// Decodes `text` in chunks of 3 records, with the table's types or as text, and conforms
    /// every chunk to the table.
    pub fn decode(&self, format: &dyn Format, text: &str, typed: bool) -> Decoded {
        let hints: HashMap<String, DataType> =
            self.hints.iter().map(|(c, t)| ((*c).to_owned(), ColumnType::parse(t).unwrap().0)).collect();
        let spec = ConformSpec {
            source_name: "source".into(),
            table: "bronze.table".into(),
            hints: hints.clone(),
            on_new_columns: self.on_new_columns,
        };
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|n| Field::new(*n, hints.get(*n).cloned().unwrap_or(DataType::Utf8), true))
            .collect();
        fields.extend(Provenance::Files.fields());
        let columns = Mutex::new(TableColumns::existing(&Schema::new(fields), self.on_new_columns, Provenance::Files));
        let types = if typed { columns.lock().unwrap().decode_types(&hints) } else { HashMap::new() };
        let options = DecodeOptions { rows_per_chunk: 3, types };
        let input = Input::Stream(Box::new(Cursor::new(text.as_bytes().to_vec())));
        let mut decoder = format.decoder(input, &options).unwrap();
        let origin = ChunkOrigin { unit: "a.file", page: None, load_id: "L1", ingested_at_micros: 7 };
        let mut decoded = Decoded { batches: Vec::new(), bad: Vec::new(), typed_columns: 0 };
        while let Some(chunk) = decoder.next_chunk().unwrap() {
            decoded.typed_columns +=
                chunk.batch.schema().fields().iter().filter(|f| f.data_type() != &DataType::Utf8).count();
            let conformed = conform(chunk, &spec, &columns, &origin).unwrap();
            decoded.batches.push(conformed.batch);
            decoded
                .bad
                .extend(conformed.bad.into_iter().map(|b| (b.row, b.code.as_str().to_owned(), b.message, b.raw)));
        }
        decoded
    }

    /// Decodes `text` both ways and asserts they agree and that no column came typed as
    /// text; the typed decoding.
    pub fn typed_as_text(&self, format: &dyn Format, text: &str) -> Decoded {
        let typed = self.decode(format, text, true);
        let plain = self.decode(format, text, false);
        assert_eq!(plain.typed_columns, 0);
        assert_eq!(typed.batches, plain.batches, "{:?}", self.on_new_columns);
        assert_eq!(typed.bad, plain.bad, "{:?}", self.on_new_columns);
        typed
    }
}
