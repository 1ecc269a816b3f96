//! Conforming decoded chunks to the target table.
//!
//! A [`RawChunk`] holds columns as a file had them. Conforming maps them onto the table's
//! columns: values are typed (hints win, then the table's types, then inference), columns
//! the table lacks are handled by `on_new_columns`, values that do not parse send their
//! row to quarantine, and the metadata columns are appended. The table's columns are shared
//! by every file of a run ([`TableColumns`]), so a column added while one file is read is
//! known to the next chunk of any file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
    new_null_array,
};
use arrow::compute::kernels::boolean::{not, or};
use arrow::compute::{CastOptions, can_cast_types, cast_with_options, filter_record_batch};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::config::OnNewColumns;
use crate::error::{EngineError, Result};
use crate::schema::{self, Provenance, RESCUED_DATA, infer_text_type, is_metadata_column, type_name};
use crate::source::{BadRecord, ErrorCode, RawChunk, RawStyle};
use crate::text_cast;

/// What a source asks of conforming.
#[derive(Debug, Clone)]
pub struct ConformSpec {
    pub source_name: String,
    pub table: String,
    /// Type hints by column name.
    pub hints: HashMap<String, DataType>,
    pub on_new_columns: OnNewColumns,
}

/// The data columns of a table (metadata columns excluded), shared by all files of a run.
#[derive(Debug, Clone)]
pub struct TableColumns {
    fields: Vec<FieldRef>,
    /// Whether the first chunk has set the columns (a new table starts without).
    established: bool,
    rescue: bool,
    /// Which metadata columns rows get.
    provenance: Provenance,
}

impl TableColumns {
    /// Columns of an existing table, from its Arrow schema. Only this kind of source's
    /// metadata columns are left out: a data column an older table has under a name since
    /// reserved for another kind stays a data column.
    pub fn existing(schema: &Schema, on_new_columns: OnNewColumns, provenance: Provenance) -> Self {
        let fields: Vec<FieldRef> = schema
            .fields()
            .iter()
            .filter(|f| !(provenance.is_row_metadata(f.name()) || f.name() == RESCUED_DATA))
            .cloned()
            .collect();
        // Switching an existing table to `rescue` adds the `_rescued_data` column.
        let rescue = on_new_columns == OnNewColumns::Rescue || schema.field_with_name(RESCUED_DATA).is_ok();
        // A table whose first commit held no record (only quarantined bodies) has no data
        // columns yet: its first chunk with columns sets them, as for a new table.
        let established = !fields.is_empty();
        TableColumns { fields, established, rescue, provenance }
    }

    /// A table that does not exist yet: its first chunk sets its columns.
    pub fn new_table(on_new_columns: OnNewColumns, provenance: Provenance) -> Self {
        TableColumns {
            fields: Vec::new(),
            established: false,
            rescue: on_new_columns == OnNewColumns::Rescue,
            provenance,
        }
    }

    /// The types a decoder may give columns in as it reads them: the table's, and the hints
    /// of columns it does not have yet.
    pub fn decode_types(&self, hints: &HashMap<String, DataType>) -> HashMap<String, DataType> {
        let mut types = hints.clone();
        for field in &self.fields {
            types.insert(field.name().clone(), field.data_type().clone());
        }
        types
    }

    /// Whether any chunk has been seen (a new table with no rows has no columns yet).
    pub fn established(&self) -> bool {
        self.established
    }

    /// The full table schema: data columns, `_rescued_data` when rescuing, metadata columns.
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields: Vec<FieldRef> = self.fields.clone();
        if self.rescue {
            fields.push(Arc::new(Field::new(RESCUED_DATA, DataType::Utf8, true)));
        }
        fields.extend(self.provenance.fields().into_iter().map(Arc::new));
        Arc::new(Schema::new(fields))
    }
}

/// Where a chunk came from, for the metadata columns and error messages.
#[derive(Debug, Clone)]
pub struct ChunkOrigin<'a> {
    /// The file's path, or the request's URL (secrets removed).
    pub unit: &'a str,
    /// The page's number in its sweep (extractors).
    pub page: Option<i64>,
    pub load_id: &'a str,
    pub ingested_at_micros: i64,
}

/// A chunk in the table's schema, and the rows that went to quarantine.
#[derive(Debug)]
pub struct Conformed {
    pub batch: RecordBatch,
    pub bad: Vec<BadRecord>,
}

/// What to do with each input column.
enum Disposition {
    Keep,
    Rescue,
    Drop,
}

/// Conforms one chunk to the table, evolving the shared columns as `spec` allows.
pub fn conform(
    chunk: RawChunk,
    spec: &ConformSpec,
    columns: &Mutex<TableColumns>,
    origin: &ChunkOrigin<'_>,
) -> Result<Conformed> {
    let RawChunk { batch: input, rows, mut bad, text, raw_style } = chunk;
    let input_schema = input.schema();
    let (schema, dispositions, provenance) = {
        let mut columns = columns.lock().map_err(|_| EngineError::Internal("table columns lock poisoned".into()))?;
        let dispositions = plan_columns(&mut columns, &input, text, spec, origin.unit)?;
        (columns.arrow_schema(), dispositions, columns.provenance)
    };

    let cast_options = CastOptions { safe: true, format_options: FormatOptions::default() };
    let rows_in = input.num_rows();
    let mut out: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    let mut bad_mask: Option<BooleanArray> = None;
    let mut failures: Vec<(usize, BooleanArray)> = Vec::new();
    let data_fields = schema.fields().iter().filter(|f| !provenance.is_row_metadata(f.name()));
    for field in data_fields {
        let Some(index) = input_schema.index_of(field.name()).ok() else {
            if field.name() == RESCUED_DATA {
                out.push(Arc::new(rescued(&input, &dispositions)?));
            } else {
                out.push(new_null_array(field.data_type(), rows_in));
            }
            continue;
        };
        let column = input.column(index);
        if column.data_type() == field.data_type() {
            out.push(column.clone());
            continue;
        }
        if !can_cast_types(column.data_type(), field.data_type()) {
            return Err(EngineError::IncompatibleColumn {
                source_name: spec.source_name.clone(),
                file: origin.unit.to_owned(),
                column: field.name().clone(),
                found: type_name(column.data_type()),
                expected: type_name(field.data_type()),
            });
        }
        // Canonical text types fast and cannot fail; anything else goes through Arrow's cast.
        let canonical = column
            .as_any()
            .downcast_ref::<StringArray>()
            .and_then(|values| text_cast::parse_canonical(values, field.data_type()));
        if let Some(typed) = canonical {
            out.push(typed);
            continue;
        }
        let typed = cast_with_options(column, field.data_type(), &cast_options)
            .map_err(|e| EngineError::arrow(format!("casting `{}` in `{}`", field.name(), origin.unit), e))?;
        let violations = inlet_quality::unparsed_values(column.as_ref(), typed.as_ref())
            .map_err(|e| EngineError::arrow("checking casts", e))?;
        if !violations.is_empty() {
            bad_mask = Some(match bad_mask {
                None => violations.mask.clone(),
                Some(mask) => or(&mask, &violations.mask).map_err(|e| EngineError::arrow("combining masks", e))?,
            });
            failures.push((index, violations.mask));
        }
        out.push(typed);
    }

    let mut rows = rows;
    if let Some(mask) = bad_mask {
        bad.extend(type_parse_records(&input, &rows, &mask, &failures, &schema, raw_style)?);
        let keep = not(&mask).map_err(|e| EngineError::arrow("negating mask", e))?;
        let data_schema = Arc::new(Schema::new(
            schema.fields().iter().filter(|f| !provenance.is_row_metadata(f.name())).cloned().collect::<Vec<_>>(),
        ));
        let data = RecordBatch::try_new(data_schema, out).map_err(|e| EngineError::arrow("assembling chunk", e))?;
        let data = filter_record_batch(&data, &keep).map_err(|e| EngineError::arrow("filtering bad rows", e))?;
        out = data.columns().to_vec();
        rows = arrow::compute::filter(&rows, &keep)
            .map_err(|e| EngineError::arrow("filtering row numbers", e))?
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .ok_or_else(|| EngineError::Internal("row numbers are not int64".into()))?;
    }

    let n = rows.len();
    out.push(Arc::new(repeated(origin.unit, n)));
    if provenance == Provenance::Requests {
        out.push(Arc::new(Int64Array::from(vec![origin.page; n])));
    }
    out.push(Arc::new(rows));
    out.push(Arc::new(repeated(origin.load_id, n)));
    out.push(Arc::new(
        TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(origin.ingested_at_micros, n))
            .with_timezone("UTC"),
    ));
    let batch = RecordBatch::try_new(schema, out).map_err(|e| EngineError::arrow("assembling conformed chunk", e))?;
    Ok(Conformed { batch, bad })
}

/// `value` `n` times, allocated once.
pub fn repeated(value: &str, n: usize) -> StringArray {
    let mut builder = StringBuilder::with_capacity(n, n * value.len());
    for _ in 0..n {
        builder.append_value(value);
    }
    builder.finish()
}

/// Decides each input column's fate and evolves the table columns (under the lock).
fn plan_columns(
    columns: &mut TableColumns,
    input: &RecordBatch,
    text: bool,
    spec: &ConformSpec,
    file: &str,
) -> Result<Vec<Disposition>> {
    let new_table = !columns.established;
    let mut dispositions = Vec::with_capacity(input.num_columns());
    let mut new_columns = Vec::new();
    for (field, column) in input.schema().fields().iter().zip(input.columns()) {
        let known = columns.fields.iter().any(|f| f.name() == field.name());
        if known {
            dispositions.push(Disposition::Keep);
            continue;
        }
        if is_metadata_column(field.name()) {
            return Err(EngineError::Schema {
                table: spec.table.clone(),
                message: format!(
                    "`{file}` has a column named `{}`, which inlet reserves for its metadata",
                    field.name()
                ),
            });
        }
        let mode = if new_table { OnNewColumns::Add } else { spec.on_new_columns };
        match mode {
            OnNewColumns::Add => {
                let data_type = match spec.hints.get(field.name()) {
                    Some(hint) => hint.clone(),
                    None if text => match column.as_any().downcast_ref::<StringArray>() {
                        Some(values) => infer_text_type(values),
                        None => schema::delta_compatible(column.data_type()),
                    },
                    None => schema::delta_compatible(column.data_type()),
                };
                columns.fields.push(Arc::new(Field::new(field.name(), data_type, true)));
                dispositions.push(Disposition::Keep);
            }
            OnNewColumns::Rescue => dispositions.push(Disposition::Rescue),
            OnNewColumns::Ignore => dispositions.push(Disposition::Drop),
            OnNewColumns::Fail => {
                new_columns.push(field.name().clone());
                dispositions.push(Disposition::Drop);
            }
        }
    }
    if !new_columns.is_empty() {
        return Err(EngineError::NewColumns {
            source_name: spec.source_name.clone(),
            file: file.to_owned(),
            columns: new_columns,
        });
    }
    // A chunk without columns (an empty page, a page of bad records only) sets nothing.
    if input.num_columns() > 0 {
        columns.established = true;
    }
    Ok(dispositions)
}

/// `_rescued_data`: the rescued columns of each row as a JSON object, null when none had a value.
fn rescued(input: &RecordBatch, dispositions: &[Disposition]) -> Result<StringArray> {
    let rescued: Vec<usize> =
        dispositions.iter().enumerate().filter(|(_, d)| matches!(d, Disposition::Rescue)).map(|(i, _)| i).collect();
    let rows = input.num_rows();
    if rescued.is_empty() {
        return Ok(StringArray::new_null(rows));
    }
    let schema = input.schema();
    let options = FormatOptions::default();
    let formatters = rescued
        .iter()
        .map(|&i| ArrayFormatter::try_new(input.column(i).as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EngineError::arrow("formatting rescued columns", e))?;
    let mut builder = StringBuilder::with_capacity(rows, rows * 16);
    for row in 0..rows {
        let mut object = serde_json::Map::new();
        for (formatter, &i) in formatters.iter().zip(&rescued) {
            if input.column(i).is_valid(row) {
                object.insert(
                    schema.field(i).name().clone(),
                    serde_json::Value::String(formatter.value(row).to_string()),
                );
            }
        }
        if object.is_empty() {
            builder.append_null();
        } else {
            builder.append_value(serde_json::Value::Object(object).to_string());
        }
    }
    Ok(builder.finish())
}

/// Quarantine records for rows whose values did not parse.
fn type_parse_records(
    input: &RecordBatch,
    rows: &Int64Array,
    mask: &BooleanArray,
    failures: &[(usize, BooleanArray)],
    schema: &Schema,
    raw_style: RawStyle,
) -> Result<Vec<BadRecord>> {
    let input_schema = input.schema();
    let options = FormatOptions::default();
    let formatters = input
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EngineError::arrow("formatting quarantined rows", e))?;
    let mut records = Vec::with_capacity(mask.true_count());
    for row in (0..mask.len()).filter(|&r| mask.value(r)) {
        let mut problems = Vec::new();
        for (index, failed) in failures {
            if failed.value(row) {
                let name = input_schema.field(*index).name();
                let expected = schema.field_with_name(name).map(|f| type_name(f.data_type())).unwrap_or_default();
                problems
                    .push(format!("column `{name}`: `{}` is not a valid {expected}", formatters[*index].value(row)));
            }
        }
        let raw = raw_record(input, &formatters, row, raw_style);
        records.push(BadRecord {
            row: rows.value(row),
            code: ErrorCode::TypeParse,
            message: problems.join("; "),
            raw: Some(raw),
        });
    }
    Ok(records)
}

/// A decoded row shown again as raw text.
fn raw_record(input: &RecordBatch, formatters: &[ArrayFormatter<'_>], row: usize, style: RawStyle) -> String {
    match style {
        RawStyle::Csv { delimiter, quote } => {
            let delimiter = char::from(delimiter);
            let quote = char::from(quote);
            let mut line = String::new();
            for (i, formatter) in formatters.iter().enumerate() {
                if i > 0 {
                    line.push(delimiter);
                }
                if input.column(i).is_null(row) {
                    continue;
                }
                let value = formatter.value(row).to_string();
                if value.contains([delimiter, quote, '\n', '\r']) {
                    let doubled = value.replace(quote, &format!("{quote}{quote}"));
                    line.push(quote);
                    line.push_str(&doubled);
                    line.push(quote);
                } else {
                    line.push_str(&value);
                }
            }
            line
        }
        RawStyle::Json => {
            let schema = input.schema();
            let mut object = serde_json::Map::new();
            // Absent keys and nulls look the same once decoded: both are left out.
            for (i, formatter) in formatters.iter().enumerate() {
                if input.column(i).is_valid(row) {
                    object.insert(
                        schema.field(i).name().clone(),
                        serde_json::Value::String(formatter.value(row).to_string()),
                    );
                }
            }
            serde_json::Value::Object(object).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::timestamp_type;

    fn chunk(names: &[&str], rows: Vec<Vec<Option<&str>>>) -> RawChunk {
        let fields: Vec<Field> = names.iter().map(|n| Field::new(*n, DataType::Utf8, true)).collect();
        let columns: Vec<ArrayRef> = (0..names.len())
            .map(|c| Arc::new(StringArray::from(rows.iter().map(|r| r[c]).collect::<Vec<_>>())) as ArrayRef)
            .collect();
        let n = rows.len() as i64;
        RawChunk {
            batch: RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap(),
            rows: Int64Array::from_iter_values(1..=n),
            bad: Vec::new(),
            text: true,
            raw_style: RawStyle::Csv { delimiter: b',', quote: b'"' },
        }
    }

    fn spec(mode: OnNewColumns) -> ConformSpec {
        ConformSpec {
            source_name: "orders".into(),
            table: "bronze.orders".into(),
            hints: HashMap::from([("amount".to_owned(), DataType::Decimal128(18, 2))]),
            on_new_columns: mode,
        }
    }

    const ORIGIN: ChunkOrigin<'static> =
        ChunkOrigin { unit: "a.csv", page: None, load_id: "L1", ingested_at_micros: 7 };

    #[test]
    fn new_table_takes_hints_and_inference_and_quarantines_bad_values() {
        let columns = Mutex::new(TableColumns::new_table(OnNewColumns::Add, Provenance::Files));
        let out = conform(
            chunk(
                &["id", "amount", "ts"],
                vec![
                    vec![Some("1"), Some("1.50"), Some("2024-01-01T00:00:00Z")],
                    vec![Some("2"), Some("abc"), None],
                    vec![Some("3"), None, Some("2024-01-02T00:00:00+01:00")],
                ],
            ),
            &spec(OnNewColumns::Add),
            &columns,
            &ORIGIN,
        )
        .unwrap();
        let schema = out.batch.schema();
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        assert_eq!(schema.field(1).data_type(), &DataType::Decimal128(18, 2));
        assert_eq!(schema.field(2).data_type(), &timestamp_type());
        assert_eq!(out.batch.num_rows(), 2);
        assert_eq!(out.bad.len(), 1);
        assert_eq!(out.bad[0].row, 2);
        assert_eq!(out.bad[0].code, ErrorCode::TypeParse);
        assert!(out.bad[0].message.contains("`amount`"), "{}", out.bad[0].message);
        assert_eq!(out.bad[0].raw.as_deref(), Some("2,abc,"));
        let source_rows =
            out.batch.column_by_name("_source_row").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(source_rows.values(), &[1, 3]);
    }

    fn existing(mode: OnNewColumns) -> Mutex<TableColumns> {
        let schema = Schema::new(vec![Field::new("id", DataType::Int64, true)]);
        Mutex::new(TableColumns::existing(&schema, mode, Provenance::Files))
    }

    #[test]
    fn drift_modes() {
        let input = || chunk(&["id", "extra"], vec![vec![Some("1"), Some("x")], vec![Some("2"), None]]);

        let columns = existing(OnNewColumns::Add);
        let out = conform(input(), &spec(OnNewColumns::Add), &columns, &ORIGIN).unwrap();
        assert!(out.batch.column_by_name("extra").is_some());
        assert!(columns.lock().unwrap().arrow_schema().field_with_name("extra").is_ok());

        let columns = existing(OnNewColumns::Rescue);
        let out = conform(input(), &spec(OnNewColumns::Rescue), &columns, &ORIGIN).unwrap();
        let rescued = out.batch.column_by_name(RESCUED_DATA).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(rescued.value(0), r#"{"extra":"x"}"#);
        assert!(rescued.is_null(1));
        assert!(out.batch.column_by_name("extra").is_none());

        let columns = existing(OnNewColumns::Ignore);
        let out = conform(input(), &spec(OnNewColumns::Ignore), &columns, &ORIGIN).unwrap();
        assert_eq!(out.batch.num_columns(), 1 + 4);

        let columns = existing(OnNewColumns::Fail);
        let err = conform(input(), &spec(OnNewColumns::Fail), &columns, &ORIGIN).unwrap_err();
        assert!(err.to_string().contains("a.csv") && err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn decoders_type_columns_as_the_table_has_them_and_new_ones_by_their_hints() {
        let columns = existing(OnNewColumns::Add);
        let hints =
            HashMap::from([("id".to_owned(), DataType::Int32), ("amount".to_owned(), DataType::Decimal128(18, 2))]);
        let types = columns.lock().unwrap().decode_types(&hints);
        // The table's `bigint` wins over a hint of `int`, as conforming casts to it.
        assert_eq!(
            types,
            HashMap::from([("id".to_owned(), DataType::Int64), ("amount".to_owned(), DataType::Decimal128(18, 2)),])
        );
    }

    #[test]
    fn missing_columns_are_null() {
        let columns = Mutex::new(TableColumns::existing(
            &Schema::new(vec![Field::new("id", DataType::Int64, true), Field::new("gone", DataType::Utf8, true)]),
            OnNewColumns::Add,
            Provenance::Files,
        ));
        let out = conform(chunk(&["id"], vec![vec![Some("5")]]), &spec(OnNewColumns::Add), &columns, &ORIGIN).unwrap();
        assert!(out.batch.column_by_name("gone").unwrap().is_null(0));
    }
}
