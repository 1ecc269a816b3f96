//! Rows decoded into Arrow builders, a page at a time, with the change columns of CDC.
//!
//! A value a column cannot hold sends its row to quarantine (the row's other values as
//! JSON, the message naming the column); the columns of the page stay aligned meanwhile.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use inlet_engine::source::{BadRecord, ErrorCode, RawChunk, RawStyle};

use super::types::{Builder, Column};
use crate::Error;

/// The columns CDC adds before the row's own, in order.
pub const CHANGE_COLUMNS: [&str; 6] = ["_op", "_lsn", "_commit_ts", "_xid", "_unchanged_columns", "_before"];

/// One value of a change's tuple.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Null,
    /// A TOASTed value the change did not touch: PostgreSQL does not send it.
    Unchanged,
    Binary(&'a [u8]),
}

/// What a change says besides its row.
pub struct Change<'a> {
    pub op: &'a str,
    pub lsn: u64,
    /// Microseconds since the Unix epoch.
    pub commit_micros: i64,
    pub xid: u32,
    /// The old row or key as JSON (an update that changed the key, or any row under
    /// `REPLICA IDENTITY FULL`).
    pub before: Option<String>,
}

/// Builds one page.
pub struct Rows {
    columns: Arc<Vec<Column>>,
    builders: Vec<Builder>,
    change: Option<ChangeBuilders>,
    len: usize,
    /// Rows to quarantine: index and why.
    bad: Vec<(usize, String)>,
    /// Rows of a snapshot: the change columns every row gets (`_lsn`, `_commit_ts`).
    snapshot: Option<(u64, i64)>,
}

struct ChangeBuilders {
    op: StringBuilder,
    lsn: Int64Builder,
    commit_ts: TimestampMicrosecondBuilder,
    xid: Int64Builder,
    unchanged: StringBuilder,
    before: StringBuilder,
}

impl Rows {
    /// Rows of `columns`; with `changes`, the change columns first.
    pub fn new(columns: Arc<Vec<Column>>, changes: bool, capacity: usize) -> Rows {
        let builders = columns.iter().map(|c| Builder::new(&c.ty, capacity)).collect();
        let change = changes.then(|| ChangeBuilders {
            op: StringBuilder::with_capacity(capacity, capacity * 6),
            lsn: Int64Builder::with_capacity(capacity),
            commit_ts: TimestampMicrosecondBuilder::with_capacity(capacity),
            xid: Int64Builder::with_capacity(capacity),
            unchanged: StringBuilder::new(),
            before: StringBuilder::new(),
        });
        Rows { columns, builders, change, len: 0, bad: Vec::new(), snapshot: None }
    }

    /// Rows of a CDC snapshot: `_op` is `snapshot`, with this `_lsn` and `_commit_ts`.
    pub fn with_snapshot(mut self, lsn: u64, micros: i64) -> Rows {
        self.snapshot = Some((lsn, micros));
        self
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a row of binary values (`None`: NULL), one per column.
    pub fn push(&mut self, values: &[Option<&[u8]>]) -> Result<(), Error> {
        if values.len() != self.columns.len() {
            return Err(Error::Internal(format!(
                "a row of {} values for {} columns",
                values.len(),
                self.columns.len()
            )));
        }
        if let (Some(change), Some((lsn, micros))) = (self.change.as_mut(), self.snapshot) {
            change.op.append_value("snapshot");
            change.lsn.append_value(lsn as i64);
            change.commit_ts.append_value(micros);
            change.xid.append_null();
            change.unchanged.append_null();
            change.before.append_null();
        }
        let mut problems = Vec::new();
        for ((builder, column), value) in self.builders.iter_mut().zip(self.columns.iter()).zip(values) {
            if let Err(message) = builder.append(&column.ty, *value) {
                problems.push(format!("column `{}` ({}): {message}", column.name, column.type_name));
            }
        }
        self.end_row(problems);
        Ok(())
    }

    /// Appends a change: its columns, then its row (`values` by column; missing ones are
    /// NULL, as a key-only tuple has them).
    pub fn push_change(&mut self, change: &Change, values: &[Value]) -> Result<(), Error> {
        let Some(builders) = self.change.as_mut() else {
            return Err(Error::Internal("a change pushed to rows without change columns".into()));
        };
        builders.op.append_value(change.op);
        builders.lsn.append_value(change.lsn as i64);
        builders.commit_ts.append_value(change.commit_micros);
        builders.xid.append_value(i64::from(change.xid));
        builders.before.append_option(change.before.as_deref());
        let mut unchanged = Vec::new();
        let mut problems = Vec::new();
        for (i, (builder, column)) in self.builders.iter_mut().zip(self.columns.iter()).enumerate() {
            let result = match values.get(i).copied().unwrap_or(Value::Null) {
                Value::Null => builder.append(&column.ty, None),
                Value::Unchanged => {
                    unchanged.push(serde_json::Value::String(column.name.clone()));
                    builder.append(&column.ty, None)
                }
                Value::Binary(bytes) => builder.append(&column.ty, Some(bytes)),
            };
            if let Err(message) = result {
                problems.push(format!("column `{}` ({}): {message}", column.name, column.type_name));
            }
        }
        if unchanged.is_empty() {
            builders.unchanged.append_null();
        } else {
            builders.unchanged.append_value(serde_json::Value::Array(unchanged).to_string());
        }
        self.end_row(problems);
        Ok(())
    }

    fn end_row(&mut self, problems: Vec<String>) {
        if !problems.is_empty() {
            self.bad.push((self.len, problems.join("; ")));
        }
        self.len += 1;
    }

    /// The page: its rows, numbered from 1, bad ones in quarantine.
    pub fn finish(self) -> Result<RawChunk, Error> {
        let Rows { columns, builders, change, len, bad, .. } = self;
        let mut fields: Vec<Field> = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        if let Some(mut c) = change {
            let timestamp = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
            fields.extend([
                Field::new(CHANGE_COLUMNS[0], DataType::Utf8, true),
                Field::new(CHANGE_COLUMNS[1], DataType::Int64, true),
                Field::new(CHANGE_COLUMNS[2], timestamp, true),
                Field::new(CHANGE_COLUMNS[3], DataType::Int64, true),
                Field::new(CHANGE_COLUMNS[4], DataType::Utf8, true),
                Field::new(CHANGE_COLUMNS[5], DataType::Utf8, true),
            ]);
            arrays.extend([
                Arc::new(c.op.finish()) as ArrayRef,
                Arc::new(c.lsn.finish()),
                Arc::new(c.commit_ts.finish().with_timezone("UTC")),
                Arc::new(c.xid.finish()),
                Arc::new(c.unchanged.finish()),
                Arc::new(c.before.finish()),
            ]);
        }
        fields.extend(columns.iter().map(Column::field));
        arrays.extend(builders.into_iter().map(Builder::finish));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| Error::Internal(format!("assembling a page of rows: {e}")))?;
        let rows = Int64Array::from_iter_values(1..=len as i64);
        if bad.is_empty() {
            return Ok(RawChunk { batch, rows, bad: Vec::new(), text: false, raw_style: RawStyle::Json });
        }
        let records = bad
            .iter()
            .map(|(index, message)| BadRecord {
                row: *index as i64 + 1,
                code: ErrorCode::TypeParse,
                message: message.clone(),
                raw: Some(row_json(&batch, *index)),
            })
            .collect();
        let mut keep = vec![true; len];
        for (index, _) in &bad {
            keep[*index] = false;
        }
        RawChunk { batch, rows, bad: records, text: false, raw_style: RawStyle::Json }
            .retain(&BooleanArray::from(keep))
            .map_err(|e| Error::Internal(format!("filtering bad rows: {e}")))
    }
}

/// A row as a JSON object of its values' text (the value that could not be read is null).
fn row_json(batch: &RecordBatch, index: usize) -> String {
    let options = FormatOptions::default();
    let mut object = serde_json::Map::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let value = if column.is_valid(index) {
            ArrayFormatter::try_new(column.as_ref(), &options)
                .map(|f| serde_json::Value::String(f.value(index).to_string()))
                .unwrap_or(serde_json::Value::Null)
        } else {
            serde_json::Value::Null
        };
        object.insert(field.name().clone(), value);
    }
    serde_json::Value::Object(object).to_string()
}
