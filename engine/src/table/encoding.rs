//! How the columns of a data file are encoded.
//!
//! Every file gets the table-wide settings ([`data_writer_properties`]). A file written by
//! inlet's own writers also gets settings per column, chosen from the first batch written
//! to it ([`file_writer_properties`]):
//! - no dictionary for a column whose values are nearly all distinct (ids, free text,
//!   timestamps): the encoder would build one, only to give up on it;
//! - delta encoding (`DELTA_BINARY_PACKED`) for an integer column whose values ascend, as
//!   `_source_row` and most ids do: a few bits a value instead of eight bytes.
//!
//! Both are in the Parquet format that Spark (3.3 and later: older vectorized readers refuse
//! delta encoding), Trino, DuckDB, ClickHouse and delta-rs read; the end-to-end tests read
//! the tables inlet writes with each of them. The choice is made once per writer, from the
//! first batch it gets, and holds for every file it rolls over to.

use std::collections::HashSet;

use arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Int32Type, Int64Type};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;

/// Bytes a string or binary statistic keeps: longer minimums are cut, longer maximums cut
/// and rounded up, so both stay bounds (and a commit's statistics stay small). Parquet's
/// default too; set here so it stays so.
const STATISTICS_TRUNCATE_BYTES: usize = 64;

/// Values of the first batch looked at per column.
const SAMPLE_ROWS: usize = 4096;

/// Fewer sampled values than this decide nothing: the table-wide settings stay.
const MIN_SAMPLE_ROWS: usize = 256;

/// A column whose sample is at least this share distinct gets no dictionary.
const NEARLY_UNIQUE: f64 = 0.5;

fn table_wide() -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(256 * 1024))
        // High-cardinality columns that get past the sample give up on the dictionary after
        // 64 KiB instead of 1 MiB; low-cardinality ones never get near it.
        .set_dictionary_page_size_limit(64 * 1024)
        .set_column_dictionary_enabled(ColumnPath::from(crate::schema::SOURCE_ROW), false)
        // Delta data skipping reads column-chunk statistics; page-level ones cost CPU for nothing.
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_statistics_truncate_length(Some(STATISTICS_TRUNCATE_BYTES))
        .set_created_by(format!("inlet {}", env!("CARGO_PKG_VERSION")))
}

/// How every data file inlet writes is encoded (public so the benches measure the same).
pub fn data_writer_properties() -> WriterProperties {
    table_wide().build()
}

/// The table-wide settings, with each top-level column's own chosen from `first`, the
/// first batch of the file.
pub fn file_writer_properties(first: &RecordBatch) -> WriterProperties {
    let mut builder = table_wide();
    let rows = first.num_rows();
    if rows < MIN_SAMPLE_ROWS {
        return builder.build();
    }
    // Evenly spaced rows, so a file sorted by some column is seen across its range.
    let step = rows.div_ceil(SAMPLE_ROWS);
    let indices = UInt32Array::from_iter_values((0..rows).step_by(step).filter_map(|i| u32::try_from(i).ok()));
    for (field, column) in first.schema().fields().iter().zip(first.columns()) {
        let Some(choice) = choose(column, &indices) else { continue };
        let path = ColumnPath::from(field.name().as_str());
        if choice.no_dictionary || choice.delta {
            builder = builder.set_column_dictionary_enabled(path.clone(), false);
        }
        if choice.delta {
            builder = builder.set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        }
    }
    builder.build()
}

/// What the sample says of one column.
#[derive(Debug, PartialEq, Eq)]
struct Choice {
    no_dictionary: bool,
    delta: bool,
}

/// The choice for a top-level column of a primitive or string type; `None` for nested
/// columns, and where the sample is too small to tell.
fn choose(column: &ArrayRef, indices: &UInt32Array) -> Option<Choice> {
    let data_type = column.data_type();
    if data_type.is_nested() || matches!(data_type, DataType::Null | DataType::Boolean) {
        return None;
    }
    let sample = take(column.as_ref(), indices, None).ok()?;
    let values = sample.len() - sample.null_count();
    if values < MIN_SAMPLE_ROWS {
        return None;
    }
    let distinct = distinct_values(&sample)?;
    let nearly_unique = distinct as f64 >= NEARLY_UNIQUE * values as f64;
    let delta = nearly_unique && ascending(&sample);
    Some(Choice { no_dictionary: nearly_unique, delta })
}

/// Distinct non-null values of `sample`.
fn distinct_values(sample: &ArrayRef) -> Option<usize> {
    let converter = RowConverter::new(vec![SortField::new(sample.data_type().clone())]).ok()?;
    let rows = converter.convert_columns(std::slice::from_ref(sample)).ok()?;
    let distinct: HashSet<_> = (0..sample.len()).filter(|&i| sample.is_valid(i)).map(|i| rows.row(i)).collect();
    Some(distinct.len())
}

/// Whether `sample` is a 32- or 64-bit integer column whose values never descend.
fn ascending(sample: &ArrayRef) -> bool {
    fn never_descends<T: PartialOrd + Copy>(values: impl Iterator<Item = Option<T>>) -> bool {
        let mut last: Option<T> = None;
        for value in values.flatten() {
            if last.is_some_and(|l| value < l) {
                return false;
            }
            last = Some(value);
        }
        true
    }
    match sample.data_type() {
        DataType::Int64 => never_descends(sample.as_primitive::<Int64Type>().iter()),
        DataType::Int32 => never_descends(sample.as_primitive::<Int32Type>().iter()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    fn batch(rows: i64) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("_source_row", DataType::Int64, true),
            Field::new("customer_id", DataType::Int64, true),
            Field::new("status", DataType::Utf8, true),
            Field::new("note", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None), true),
        ]);
        let statuses = ["new", "paid", "shipped"];
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(1..=rows)),
            Arc::new(Int64Array::from_iter_values((0..rows).map(|i| (i * 7919) % 1_000_003))),
            Arc::new(StringArray::from_iter_values((0..rows).map(|i| statuses[(i % 3) as usize]))),
            Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("note {i} {}", "x".repeat(100))))),
            Arc::new(TimestampMicrosecondArray::from_iter_values((0..rows).map(|i| i * 1_000_000))),
        ];
        RecordBatch::try_new(Arc::new(schema), columns).unwrap()
    }

    #[test]
    fn choices_follow_the_first_batch() {
        let first = batch(10_000);
        let indices = UInt32Array::from_iter_values((0..10_000).step_by(3));
        let choice = |i: usize| choose(first.column(i), &indices);
        assert_eq!(choice(0), Some(Choice { no_dictionary: true, delta: true }), "_source_row");
        assert_eq!(choice(1), Some(Choice { no_dictionary: true, delta: false }), "customer_id");
        assert_eq!(choice(2), Some(Choice { no_dictionary: false, delta: false }), "status");
        assert_eq!(choice(3), Some(Choice { no_dictionary: true, delta: false }), "note");
        // Only 32- and 64-bit integers are delta-encoded.
        assert_eq!(choice(4), Some(Choice { no_dictionary: true, delta: false }), "ts");
        let small = batch(100);
        let all = UInt32Array::from_iter_values(0..100);
        assert_eq!(choose(small.column(0), &all), None);
    }

    #[test]
    fn files_read_back_with_the_chosen_encodings_and_truncated_statistics() {
        let first = batch(20_000);
        let mut bytes = Vec::new();
        let mut writer =
            ArrowWriter::try_new(&mut bytes, first.schema(), Some(file_writer_properties(&first))).unwrap();
        writer.write(&first).unwrap();
        writer.close().unwrap();
        let bytes = bytes::Bytes::from(bytes);
        let read: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(arrow::compute::concat_batches(&first.schema(), &read).unwrap(), first);
        let reader = SerializedFileReader::new(bytes).unwrap();
        let group = reader.metadata().row_group(0);
        let encodings = |i: usize| group.column(i).encodings().collect::<Vec<_>>();
        assert!(encodings(0).contains(&Encoding::DELTA_BINARY_PACKED), "{:?}", encodings(0));
        assert!(!encodings(1).contains(&Encoding::RLE_DICTIONARY), "{:?}", encodings(1));
        assert!(encodings(2).contains(&Encoding::RLE_DICTIONARY), "{:?}", encodings(2));
        let note = group.column(3).statistics().unwrap();
        let (min, max) = (note.min_bytes_opt().unwrap(), note.max_bytes_opt().unwrap());
        assert_eq!(min.len(), STATISTICS_TRUNCATE_BYTES);
        assert!(max.len() <= STATISTICS_TRUNCATE_BYTES);
        // Still bounds: the cut minimum is below every value, the rounded-up maximum above.
        let notes = first.column(3).as_string::<i32>();
        assert!(notes.iter().flatten().all(|n| n.as_bytes() >= min && n.as_bytes() <= max));
    }
}
