//! Column types: the type hints of the pipeline file, inference from text, and the
//! metadata and quarantine columns inlet adds.
//!
//! Every type here is one a Delta table of reader 1 / writer 2 can hold: timestamps are
//! `Timestamp(Microsecond, "UTC")` (Delta `timestamp`), never `timestamp_ntz`.

use std::sync::Arc;

use arrow::array::StringArray;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// `_source_file`: path of the file relative to the source root (file sources).
pub const SOURCE_FILE: &str = "_source_file";
/// `_source_url`: the URL of the request a row came from, secrets removed (extractors).
pub const SOURCE_URL: &str = "_source_url";
/// `_source_page`: the page's number in its sweep, 1-based (extractors).
pub const SOURCE_PAGE: &str = "_source_page";
/// `_source_row`: 1-based record number in the file, or in the page.
pub const SOURCE_ROW: &str = "_source_row";
/// `_load_id`: one id per run.
pub const LOAD_ID: &str = "_load_id";
/// `_ingested_at`: when the run started, UTC.
pub const INGESTED_AT: &str = "_ingested_at";
/// `_rescued_data`: unknown columns as a JSON object, with `on_new_columns = "rescue"`.
pub const RESCUED_DATA: &str = "_rescued_data";

/// Every name inlet reserves for the row metadata of any kind of source.
const RESERVED: [&str; 7] = [SOURCE_FILE, SOURCE_URL, SOURCE_PAGE, SOURCE_ROW, LOAD_ID, INGESTED_AT, RESCUED_DATA];

/// Where rows came from, which decides the metadata columns every bronze row gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provenance {
    /// Files: `_source_file`, `_source_row`, `_load_id`, `_ingested_at`.
    #[default]
    Files,
    /// Requests of an extractor: `_source_url`, `_source_page`, `_source_row`, `_load_id`,
    /// `_ingested_at`.
    Requests,
}

impl Provenance {
    /// The column naming the unit a row came from: `_source_file` or `_source_url`.
    pub fn unit_column(self) -> &'static str {
        match self {
            Provenance::Files => SOURCE_FILE,
            Provenance::Requests => SOURCE_URL,
        }
    }

    /// The metadata columns appended to every bronze row, in order.
    pub fn fields(self) -> Vec<Field> {
        let mut fields = vec![Field::new(self.unit_column(), DataType::Utf8, true)];
        if self == Provenance::Requests {
            fields.push(Field::new(SOURCE_PAGE, DataType::Int64, true));
        }
        fields.extend([
            Field::new(SOURCE_ROW, DataType::Int64, true),
            Field::new(LOAD_ID, DataType::Utf8, true),
            Field::new(INGESTED_AT, timestamp_type(), true),
        ]);
        fields
    }

    /// Whether `name` is one of the row metadata columns of this kind of source.
    pub fn is_row_metadata(self, name: &str) -> bool {
        name == self.unit_column()
            || name == SOURCE_ROW
            || name == LOAD_ID
            || name == INGESTED_AT
            || (self == Provenance::Requests && name == SOURCE_PAGE)
    }

    /// The columns that identify a row in samples and quarantine: unit and record number.
    pub fn sample_columns(self) -> Vec<String> {
        vec![self.unit_column().to_owned(), SOURCE_ROW.to_owned()]
    }
}

/// Whether inlet reserves this name: row metadata of any kind of source, or `_rescued_data`.
pub fn is_metadata_column(name: &str) -> bool {
    RESERVED.contains(&name)
}

/// The Delta `timestamp` type in Arrow.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A column type a user can name in a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnType(pub DataType);

impl ColumnType {
    /// Parses a Spark/Delta-style type name: `string`, `bigint`, `int`, `smallint`, `tinyint`,
    /// `double`, `float`, `boolean`, `date`, `timestamp`, `decimal(p,s)`, `binary`.
    pub fn parse(text: &str) -> Result<ColumnType, String> {
        let lower = text.trim().to_ascii_lowercase();
        let data_type = match lower.as_str() {
            "string" | "varchar" | "text" => DataType::Utf8,
            "bigint" | "long" | "int64" => DataType::Int64,
            "int" | "integer" | "int32" => DataType::Int32,
            "smallint" | "short" => DataType::Int16,
            "tinyint" | "byte" => DataType::Int8,
            "double" | "float64" => DataType::Float64,
            "float" | "real" | "float32" => DataType::Float32,
            "boolean" | "bool" => DataType::Boolean,
            "date" => DataType::Date32,
            // Delta's `timestamp` is an instant (UTC), what PostgreSQL calls `timestamptz`.
            "timestamp" | "timestamptz" | "timestamp with time zone" => timestamp_type(),
            "binary" => DataType::Binary,
            other => {
                let inner = other
                    .strip_prefix("decimal(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .ok_or_else(|| format!("unknown type `{text}` (expected string, bigint, int, smallint, tinyint, double, float, boolean, date, timestamp (or timestamptz), decimal(p,s) or binary)"))?;
                let (precision, scale) = inner.split_once(',').unwrap_or((inner, "0"));
                let precision: u8 =
                    precision.trim().parse().map_err(|_| format!("bad decimal precision in `{text}`"))?;
                let scale: i8 = scale.trim().parse().map_err(|_| format!("bad decimal scale in `{text}`"))?;
                if !(1..=38).contains(&precision) || scale < 0 || scale as u8 > precision {
                    return Err(format!("`{text}`: decimal precision must be 1..=38 and scale 0..=precision"));
                }
                DataType::Decimal128(precision, scale)
            }
        };
        Ok(ColumnType(data_type))
    }
}

/// Maps an Arrow type read from a typed file (Parquet) to the type a Delta table stores.
pub fn delta_compatible(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Timestamp(_, _) => timestamp_type(),
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => DataType::Binary,
        DataType::Date64 => DataType::Date32,
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => DataType::Decimal128(*p, *s),
        DataType::Dictionary(_, value) => delta_compatible(value),
        DataType::Null => DataType::Utf8,
        DataType::List(field)
        | DataType::LargeList(field)
        | DataType::ListView(field)
        | DataType::FixedSizeList(field, _) => {
            DataType::List(Arc::new(Field::new(field.name(), delta_compatible(field.data_type()), true)))
        }
        DataType::Struct(fields) => DataType::Struct(
            fields.iter().map(|f| Arc::new(Field::new(f.name(), delta_compatible(f.data_type()), true))).collect(),
        ),
        DataType::Time32(_) | DataType::Time64(_) | DataType::Duration(_) | DataType::Interval(_) => DataType::Utf8,
        other => other.clone(),
    }
}

/// Infers the narrowest safe type of a text column from its non-null values.
///
/// Safe means no information is lost: integers with leading zeros stay strings (zip codes,
/// ids), and timestamps without a zone stay strings unless a hint says `timestamp`
/// (inlet never guesses a zone).
pub fn infer_text_type(values: &StringArray) -> DataType {
    let mut candidates = Candidates::all();
    let mut seen = false;
    for value in values.iter().flatten() {
        seen = true;
        candidates.narrow(value.trim_ascii());
        if candidates.is_string() {
            return DataType::Utf8;
        }
    }
    if seen { candidates.best() } else { DataType::Utf8 }
}

#[derive(Debug)]
struct Candidates {
    bigint: bool,
    double: bool,
    boolean: bool,
    timestamp: bool,
    date: bool,
}

impl Candidates {
    fn all() -> Self {
        Candidates { bigint: true, double: true, boolean: true, timestamp: true, date: true }
    }

    fn is_string(&self) -> bool {
        !(self.bigint || self.double || self.boolean || self.timestamp || self.date)
    }

    fn narrow(&mut self, value: &str) {
        if self.bigint && !looks_like_bigint(value) {
            self.bigint = false;
        }
        if self.double && !looks_like_double(value) {
            self.double = false;
        }
        if self.boolean && !matches!(value.to_ascii_lowercase().as_str(), "true" | "false") {
            self.boolean = false;
        }
        if self.timestamp && !looks_like_zoned_timestamp(value) {
            self.timestamp = false;
        }
        if self.date && chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").is_err() {
            self.date = false;
        }
    }

    fn best(&self) -> DataType {
        if self.bigint {
            DataType::Int64
        } else if self.double {
            DataType::Float64
        } else if self.boolean {
            DataType::Boolean
        } else if self.date {
            DataType::Date32
        } else if self.timestamp {
            timestamp_type()
        } else {
            DataType::Utf8
        }
    }
}

fn looks_like_bigint(value: &str) -> bool {
    let digits = value.strip_prefix(['-', '+']).unwrap_or(value);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits.len() == 1 || !digits.starts_with('0'))
        && value.parse::<i64>().is_ok()
}

fn looks_like_double(value: &str) -> bool {
    let digits = value.strip_prefix(['-', '+']).unwrap_or(value);
    // Only plain decimal notation: `inf`, `nan` and `1e5`-style ids stay text.
    let plain = digits.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'.');
    let no_leading_zero = !(digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0."));
    plain && no_leading_zero && value.parse::<f64>().is_ok_and(f64::is_finite)
}

fn looks_like_zoned_timestamp(value: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(value).is_ok()
        || chrono::DateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f%#z").is_ok()
}

/// Schema of the `<target>__quarantine` table.
pub fn quarantine_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(SOURCE_FILE, DataType::Utf8, false),
        Field::new(SOURCE_ROW, DataType::Int64, true),
        Field::new("_error_code", DataType::Utf8, false),
        Field::new("_error_message", DataType::Utf8, false),
        Field::new("_raw_record", DataType::Utf8, true),
        Field::new(LOAD_ID, DataType::Utf8, false),
        Field::new(INGESTED_AT, timestamp_type(), false),
        // Which expectations the row broke; NULL for rows that did not parse.
        Field::new(ERROR_RULE, DataType::Utf8, true),
        // The version of the table a replay landed the row in; NULL while quarantined.
        Field::new(REPLAYED_VERSION, DataType::Int64, true),
    ]))
}

/// The quarantine column a replay sets.
pub const REPLAYED_VERSION: &str = "_replayed_version";

/// The quarantine column naming the expectations a row broke.
pub const ERROR_RULE: &str = "_error_rule";

/// Human name of a type, as in hints.
pub fn type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Utf8 => "string".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Int32 => "int".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int8 => "tinyint".into(),
        DataType::Float64 => "double".into(),
        DataType::Float32 => "float".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::Binary => "binary".into(),
        other => other.to_string().to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(values: &[Option<&str>]) -> DataType {
        infer_text_type(&StringArray::from(values.to_vec()))
    }

    #[test]
    fn hints_parse() {
        assert_eq!(ColumnType::parse("BIGINT").unwrap().0, DataType::Int64);
        assert_eq!(ColumnType::parse("decimal(18, 2)").unwrap().0, DataType::Decimal128(18, 2));
        assert_eq!(ColumnType::parse("timestamp").unwrap().0, timestamp_type());
        assert!(ColumnType::parse("decimal(40,2)").is_err());
        assert!(ColumnType::parse("decimal(4,5)").is_err());
        assert!(ColumnType::parse("number").is_err());
    }

    #[test]
    fn inference_is_safe() {
        assert_eq!(infer(&[Some("1"), Some("-20"), None]), DataType::Int64);
        assert_eq!(infer(&[Some("1"), Some("2.5")]), DataType::Float64);
        assert_eq!(infer(&[Some("00123"), Some("1")]), DataType::Utf8);
        assert_eq!(infer(&[Some("1e5")]), DataType::Float64);
        assert_eq!(infer(&[Some("nan")]), DataType::Utf8);
        assert_eq!(infer(&[Some("true"), Some("FALSE")]), DataType::Boolean);
        assert_eq!(infer(&[Some("2024-01-02")]), DataType::Date32);
        assert_eq!(infer(&[Some("2024-01-02T03:04:05Z"), Some("2024-01-02 03:04:05.123+02:00")]), timestamp_type());
        assert_eq!(infer(&[Some("2024-01-02T03:04:05")]), DataType::Utf8);
        assert_eq!(infer(&[None, None]), DataType::Utf8);
        assert_eq!(infer(&[Some("99999999999999999999")]), DataType::Float64);
    }

    #[test]
    fn parquet_types_become_delta_types() {
        assert_eq!(delta_compatible(&DataType::Timestamp(TimeUnit::Nanosecond, None)), timestamp_type());
        assert_eq!(delta_compatible(&DataType::UInt32), DataType::Int64);
        assert_eq!(delta_compatible(&DataType::LargeUtf8), DataType::Utf8);
    }
}
