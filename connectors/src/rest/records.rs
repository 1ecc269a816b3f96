//! Decoded records: values at paths, a record as JSON for quarantine, a child's parent columns.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use inlet_engine::config::{JsonPath, PathStep};
use inlet_engine::source::RawChunk;
use serde_json::Value;

use super::resource::{ParentField, json_text};
use super::sweep::ParentRecord;
use crate::Error;

/// A text column's value at `row`.
pub(super) fn cell(column: &ArrayRef, row: usize) -> Option<String> {
    let text = column.as_any().downcast_ref::<StringArray>()?;
    text.is_valid(row).then(|| text.value(row).to_owned())
}

/// The value a path names in a decoded record, as text: a top-level field's cell, or what a
/// deeper path names inside a nested value's JSON text. `None` when absent or `null`.
pub(super) fn value_at(batch: &RecordBatch, row: usize, path: &JsonPath) -> Option<String> {
    let (first, rest) = path.steps.split_first()?;
    let PathStep::Key(name) = first else { return None };
    let text = cell(batch.column_by_name(name)?, row)?;
    if rest.is_empty() {
        return Some(text);
    }
    let nested: Value = serde_json::from_str(&text).ok()?;
    path.rest().first(&nested).map(json_text)
}

/// A decoded record as a JSON object of its text values (for quarantine).
pub(super) fn row_json(batch: &RecordBatch, row: usize) -> String {
    let mut object = serde_json::Map::new();
    for (i, field) in batch.schema().fields().iter().enumerate() {
        if let Some(value) = cell(batch.column(i), row) {
            object.insert(field.name().clone(), Value::String(value));
        }
    }
    Value::Object(object).to_string()
}

/// The chunk with a child's parent values as columns (`_<parent>_<field>`).
pub(super) fn with_parent_columns(
    chunk: RawChunk,
    parent: &ParentRecord,
    fields: &[ParentField],
) -> Result<RawChunk, Error> {
    let RawChunk { batch, rows, bad, text, raw_style } = chunk;
    let n = batch.num_rows();
    let mut schema_fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for field in fields {
        if schema_fields.iter().any(|f| f.name() == &field.column) {
            continue;
        }
        let value = parent.values.get(&field.text).cloned();
        schema_fields.push(Field::new(&field.column, DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from(vec![value; n])));
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(n));
    let batch = RecordBatch::try_new_with_options(Arc::new(Schema::new(schema_fields)), columns, &options)
        .map_err(|e| Error::Internal(format!("adding the parent's columns: {e}")))?;
    Ok(RawChunk { batch, rows, bad, text, raw_style })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_at_paths_in_decoded_records() {
        let body = br#"[{"id": 1, "meta": {"updated": "2024-01-01T00:00:00Z", "n": 5}}, {"id": null}]"#;
        let decoded = crate::json::decode_body(body, &JsonPath::parse("$").unwrap(), &[], false).unwrap();
        let batch = &decoded.chunk.batch;
        assert_eq!(value_at(batch, 0, &JsonPath::parse("id").unwrap()).as_deref(), Some("1"));
        assert_eq!(
            value_at(batch, 0, &JsonPath::parse("meta.updated").unwrap()).as_deref(),
            Some("2024-01-01T00:00:00Z")
        );
        assert_eq!(value_at(batch, 0, &JsonPath::parse("meta.n").unwrap()).as_deref(), Some("5"));
        assert_eq!(value_at(batch, 1, &JsonPath::parse("id").unwrap()), None);
        assert_eq!(value_at(batch, 1, &JsonPath::parse("meta.n").unwrap()), None);
    }
}
