//! PostgreSQL types as Arrow columns, decoded from their binary wire form (binary `COPY`,
//! and `pgoutput` in binary mode): one decoder for full loads, incremental loads and CDC.
//!
//! | PostgreSQL | Arrow (Delta) |
//! |---|---|
//! | `smallint`, `integer`, `bigint`, `oid` | Int16, Int32, Int64, Int64 |
//! | `real`, `double precision` | Float32, Float64 |
//! | `numeric(p,s)`, p ≤ 38 | Decimal128(p, s) |
//! | `numeric` unbounded or p > 38 | Utf8, exact (`NaN`, `Infinity` as words) |
//! | `boolean` | Boolean |
//! | `date` | Date32 |
//! | `timestamptz`, `timestamp` | Timestamp(µs, UTC); a `timestamp` keeps its wall-clock time as UTC |
//! | `time`, `timetz`, `interval` | Utf8 (`12:30:00.5`, `12:30:00+02`, ISO 8601 `P1Y2M3DT4H5M6.5S`) |
//! | `text`, `varchar`, `char(n)`, `"char"`, `name`, `citext`, `xml`, enums | Utf8 |
//! | `json`, `jsonb` | Utf8, the JSON text |
//! | `uuid`, `inet`, `cidr`, `macaddr`, `macaddr8` | Utf8, as PostgreSQL prints them |
//! | `money` | Utf8, the amount with two decimals (`-12.34`), no currency sign |
//! | `bytea` | Binary |
//! | arrays of any of these | Utf8, JSON (`[1,2,null]`, nested for several dimensions) |
//! | domains | as their base type |
//!
//! Any other type (ranges, geometry, composites, bit strings) is refused when the source
//! starts, naming the column. A value a column cannot hold (an infinite date, a `NaN` in a
//! `numeric(p,s)`) sends its row to quarantine, naming the column.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder, Float64Builder,
    Int16Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, TimeUnit};

/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

/// A column's type as inlet reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    /// `oid`: unsigned 32 bits.
    Oid,
    Float4,
    Float8,
    /// `numeric(p,s)` that fits a Decimal128.
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// `numeric` without a precision, or wider than 38 digits.
    NumericText,
    /// Text of any kind (`text`, `varchar`, enums, `json`, `xml`, ...).
    Text,
    /// `jsonb`: a version byte, then the text.
    Jsonb,
    /// `"char"`: one byte.
    Char,
    Bytea,
    Uuid,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Interval,
    /// `inet` and `cidr`.
    Inet,
    MacAddr,
    MacAddr8,
    Money,
    Array(Box<PgType>),
}

impl PgType {
    /// The type of a built-in type's OID (or a text-like extension type by name), `None`
    /// when inlet does not read it.
    pub fn builtin(oid: u32, name: &str, typmod: i32) -> Option<PgType> {
        Some(match oid {
            16 => PgType::Bool,
            17 => PgType::Bytea,
            18 => PgType::Char,
            19 | 25 | 114 | 142 | 1042 | 1043 => PgType::Text,
            20 => PgType::Int8,
            21 => PgType::Int2,
            23 => PgType::Int4,
            26 => PgType::Oid,
            700 => PgType::Float4,
            701 => PgType::Float8,
            650 | 869 => PgType::Inet,
            774 => PgType::MacAddr8,
            790 => PgType::Money,
            829 => PgType::MacAddr,
            1082 => PgType::Date,
            1083 => PgType::Time,
            1114 => PgType::Timestamp,
            1184 => PgType::TimestampTz,
            1186 => PgType::Interval,
            1266 => PgType::TimeTz,
            1700 => numeric(typmod),
            2950 => PgType::Uuid,
            3802 => PgType::Jsonb,
            _ if name == "citext" => PgType::Text,
            _ => return None,
        })
    }

    /// The Arrow type of the column.
    pub fn arrow(&self) -> DataType {
        match self {
            PgType::Bool => DataType::Boolean,
            PgType::Int2 => DataType::Int16,
            PgType::Int4 => DataType::Int32,
            PgType::Int8 | PgType::Oid => DataType::Int64,
            PgType::Float4 => DataType::Float32,
            PgType::Float8 => DataType::Float64,
            PgType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            PgType::Bytea => DataType::Binary,
            PgType::Date => DataType::Date32,
            PgType::Timestamp | PgType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            PgType::NumericText
            | PgType::Text
            | PgType::Jsonb
            | PgType::Char
            | PgType::Uuid
            | PgType::Time
            | PgType::TimeTz
            | PgType::Interval
            | PgType::Inet
            | PgType::MacAddr
            | PgType::MacAddr8
            | PgType::Money
            | PgType::Array(_) => DataType::Utf8,
        }
    }
}

/// `numeric` of type modifier `typmod`: a decimal when it has a precision of at most 38
/// and a scale from 0 to it.
fn numeric(typmod: i32) -> PgType {
    if typmod < 4 {
        return PgType::NumericText;
    }
    let precision = ((typmod - 4) >> 16) & 0xffff;
    // The scale is 11 bits, signed (PostgreSQL 15 allows a negative one).
    let raw_scale = (typmod - 4) & 0x7ff;
    let scale = if raw_scale & 0x400 != 0 { raw_scale - 0x800 } else { raw_scale };
    if (1..=38).contains(&precision) && (0..=precision).contains(&scale) {
        PgType::Decimal { precision: precision as u8, scale: scale as i8 }
    } else {
        PgType::NumericText
    }
}

/// A column being read: its name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: PgType,
    /// The type's OID.
    pub oid: u32,
    /// The type as PostgreSQL names it (`numeric(12,2)`), for messages.
    pub type_name: String,
}

impl Column {
    pub fn field(&self) -> Field {
        Field::new(&self.name, self.ty.arrow(), true)
    }
}

/// One column's values as they are decoded.
pub enum Builder {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Text(StringBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl Builder {
    pub fn new(ty: &PgType, capacity: usize) -> Builder {
        match ty {
            PgType::Bool => Builder::Bool(BooleanBuilder::with_capacity(capacity)),
            PgType::Int2 => Builder::I16(Int16Builder::with_capacity(capacity)),
            PgType::Int4 => Builder::I32(Int32Builder::with_capacity(capacity)),
            PgType::Int8 | PgType::Oid => Builder::I64(Int64Builder::with_capacity(capacity)),
            PgType::Float4 => Builder::F32(Float32Builder::with_capacity(capacity)),
            PgType::Float8 => Builder::F64(Float64Builder::with_capacity(capacity)),
            PgType::Decimal { precision, scale } => {
                Builder::Decimal(Decimal128Builder::with_capacity(capacity), *precision, *scale)
            }
            PgType::Bytea => Builder::Binary(BinaryBuilder::with_capacity(capacity, capacity * 16)),
            PgType::Date => Builder::Date(Date32Builder::with_capacity(capacity)),
            PgType::Timestamp | PgType::TimestampTz => {
                Builder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            _ => Builder::Text(StringBuilder::with_capacity(capacity, capacity * 16)),
        }
    }

    pub fn append_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::I16(b) => b.append_null(),
            Builder::I32(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
            Builder::F32(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::Decimal(b, ..) => b.append_null(),
            Builder::Text(b) => b.append_null(),
            Builder::Binary(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Timestamp(b) => b.append_null(),
        }
    }

    /// Appends one value in binary form (`None`: NULL). On error, appends a null (the
    /// columns stay aligned) and says why the value cannot be read.
    pub fn append(&mut self, ty: &PgType, value: Option<&[u8]>) -> Result<(), String> {
        let Some(bytes) = value else {
            self.append_null();
            return Ok(());
        };
        let result = self.append_value(ty, bytes);
        if result.is_err() {
            self.append_null();
        }
        result
    }

    fn append_value(&mut self, ty: &PgType, bytes: &[u8]) -> Result<(), String> {
        match (self, ty) {
            (Builder::Bool(b), _) => b.append_value(fixed::<1>(bytes)?[0] != 0),
            (Builder::I16(b), _) => b.append_value(i16::from_be_bytes(fixed(bytes)?)),
            (Builder::I32(b), _) => b.append_value(i32::from_be_bytes(fixed(bytes)?)),
            (Builder::I64(b), PgType::Oid) => b.append_value(i64::from(u32::from_be_bytes(fixed(bytes)?))),
            (Builder::I64(b), _) => b.append_value(i64::from_be_bytes(fixed(bytes)?)),
            (Builder::F32(b), _) => b.append_value(f32::from_be_bytes(fixed(bytes)?)),
            (Builder::F64(b), _) => b.append_value(f64::from_be_bytes(fixed(bytes)?)),
            (Builder::Decimal(b, precision, scale), _) => {
                let value = Numeric::parse(bytes)?.to_i128(*scale)?;
                if value.unsigned_abs() >= 10u128.pow(u32::from(*precision)) {
                    return Err(format!("{} does not fit numeric({precision},{scale})", Numeric::parse(bytes)?));
                }
                b.append_value(value);
            }
            (Builder::Binary(b), _) => b.append_value(bytes),
            (Builder::Date(b), _) => b.append_value(date(i32::from_be_bytes(fixed(bytes)?))?),
            (Builder::Timestamp(b), _) => b.append_value(timestamp(i64::from_be_bytes(fixed(bytes)?))?),
            (Builder::Text(b), ty) => {
                let mut text = String::new();
                write_text(&mut text, ty, bytes)?;
                b.append_value(text);
            }
        }
        Ok(())
    }

    pub fn finish(self) -> ArrayRef {
        match self {
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::I16(mut b) => Arc::new(b.finish()),
            Builder::I32(mut b) => Arc::new(b.finish()),
            Builder::I64(mut b) => Arc::new(b.finish()),
            Builder::F32(mut b) => Arc::new(b.finish()),
            Builder::F64(mut b) => Arc::new(b.finish()),
            Builder::Decimal(mut b, precision, scale) => {
                Arc::new(b.finish().with_precision_and_scale(precision, scale).unwrap_or_else(|_| {
                    // Unreachable: the precision and scale were checked when the type was read.
                    arrow::array::Decimal128Array::from(Vec::<i128>::new())
                }))
            }
            Builder::Text(mut b) => Arc::new(b.finish()),
            Builder::Binary(mut b) => Arc::new(b.finish()),
            Builder::Date(mut b) => Arc::new(b.finish()),
            Builder::Timestamp(mut b) => Arc::new(b.finish().with_timezone("UTC")),
        }
    }
}

fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], String> {
    bytes.try_into().map_err(|_| format!("expected {N} bytes, got {}", bytes.len()))
}

fn date(days: i32) -> Result<i32, String> {
    match days {
        i32::MAX => Err("the date is `infinity`, which Delta cannot hold".to_owned()),
        i32::MIN => Err("the date is `-infinity`, which Delta cannot hold".to_owned()),
        days => days.checked_add(PG_EPOCH_DAYS).ok_or_else(|| "the date is out of range".to_owned()),
    }
}

fn timestamp(micros: i64) -> Result<i64, String> {
    match micros {
        i64::MAX => Err("the timestamp is `infinity`, which Delta cannot hold".to_owned()),
        i64::MIN => Err("the timestamp is `-infinity`, which Delta cannot hold".to_owned()),
        micros => micros.checked_add(PG_EPOCH_MICROS).ok_or_else(|| "the timestamp is out of range".to_owned()),
    }
}

/// The text of a value of any type (the old row of a change, as JSON).
pub fn text_of(ty: &PgType, bytes: &[u8]) -> Result<String, String> {
    let mut text = String::new();
    write_text(&mut text, ty, bytes)?;
    Ok(text)
}

/// Writes the text form of a value of a text-typed column.
fn write_text(out: &mut String, ty: &PgType, bytes: &[u8]) -> Result<(), String> {
    match ty {
        PgType::Text | PgType::Char => out.push_str(utf8(bytes)?),
        PgType::Jsonb => match bytes.split_first() {
            Some((1, text)) => out.push_str(utf8(text)?),
            _ => return Err("a jsonb value of an unknown version".to_owned()),
        },
        PgType::NumericText => {
            let _ = write!(out, "{}", Numeric::parse(bytes)?);
        }
        PgType::Uuid => {
            let b: [u8; 16] = fixed(bytes)?;
            for (i, byte) in b.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push('-');
                }
                let _ = write!(out, "{byte:02x}");
            }
        }
        PgType::Time => write_time(out, i64::from_be_bytes(fixed(bytes)?)),
        PgType::TimeTz => {
            if bytes.len() != 12 {
                return Err(format!("expected 12 bytes, got {}", bytes.len()));
            }
            write_time(out, i64::from_be_bytes(fixed(&bytes[..8])?));
            write_zone(out, i32::from_be_bytes(fixed(&bytes[8..])?));
        }
        PgType::Interval => {
            if bytes.len() != 16 {
                return Err(format!("expected 16 bytes, got {}", bytes.len()));
            }
            let micros = i64::from_be_bytes(fixed(&bytes[..8])?);
            let days = i32::from_be_bytes(fixed(&bytes[8..12])?);
            let months = i32::from_be_bytes(fixed(&bytes[12..])?);
            write_interval(out, months, days, micros);
        }
        PgType::Inet => write_inet(out, bytes)?,
        PgType::MacAddr | PgType::MacAddr8 => {
            let expected = if *ty == PgType::MacAddr { 6 } else { 8 };
            if bytes.len() != expected {
                return Err(format!("expected {expected} bytes, got {}", bytes.len()));
            }
            for (i, byte) in bytes.iter().enumerate() {
                if i > 0 {
                    out.push(':');
                }
                let _ = write!(out, "{byte:02x}");
            }
        }
        PgType::Money => {
            let cents = i64::from_be_bytes(fixed(bytes)?);
            let sign = if cents < 0 { "-" } else { "" };
            let _ = write!(out, "{sign}{}.{:02}", cents.unsigned_abs() / 100, cents.unsigned_abs() % 100);
        }
        PgType::Array(element) => write_array(out, element, bytes)?,
        // Scalars inside arrays.
        PgType::Bool => out.push_str(if fixed::<1>(bytes)?[0] != 0 { "true" } else { "false" }),
        PgType::Int2 => {
            let _ = write!(out, "{}", i16::from_be_bytes(fixed(bytes)?));
        }
        PgType::Int4 => {
            let _ = write!(out, "{}", i32::from_be_bytes(fixed(bytes)?));
        }
        PgType::Int8 => {
            let _ = write!(out, "{}", i64::from_be_bytes(fixed(bytes)?));
        }
        PgType::Oid => {
            let _ = write!(out, "{}", u32::from_be_bytes(fixed(bytes)?));
        }
        PgType::Float4 => {
            let _ = write!(out, "{}", f32::from_be_bytes(fixed(bytes)?));
        }
        PgType::Float8 => {
            let _ = write!(out, "{}", f64::from_be_bytes(fixed(bytes)?));
        }
        PgType::Decimal { .. } => {
            let _ = write!(out, "{}", Numeric::parse(bytes)?);
        }
        PgType::Bytea => {
            out.push_str("\\x");
            for byte in bytes {
                let _ = write!(out, "{byte:02x}");
            }
        }
        PgType::Date => {
            let days = date(i32::from_be_bytes(fixed(bytes)?))?;
            let date = chrono::DateTime::from_timestamp(i64::from(days) * 86_400, 0)
                .ok_or_else(|| "the date is out of range".to_owned())?;
            let _ = write!(out, "{}", date.format("%Y-%m-%d"));
        }
        PgType::Timestamp | PgType::TimestampTz => {
            let micros = timestamp(i64::from_be_bytes(fixed(bytes)?))?;
            let at = chrono::DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| "the timestamp is out of range".to_owned())?;
            let zone = if *ty == PgType::TimestampTz { "+00:00" } else { "" };
            let _ = write!(out, "{}{zone}", at.format("%Y-%m-%dT%H:%M:%S%.f"));
        }
    }
    Ok(())
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))
}

/// `HH:MM:SS[.ffffff]`, trailing zeros of the fraction dropped, as PostgreSQL prints it.
fn write_time(out: &mut String, micros: i64) {
    let seconds = micros / 1_000_000;
    let _ = write!(out, "{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60);
    write_fraction(out, micros % 1_000_000);
}

fn write_fraction(out: &mut String, micros: i64) {
    if micros != 0 {
        let digits = format!("{:06}", micros.unsigned_abs());
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

/// A `timetz` zone (seconds west of UTC) as `+HH[:MM[:SS]]`.
fn write_zone(out: &mut String, west: i32) {
    let east = -west;
    let sign = if east < 0 { '-' } else { '+' };
    let east = east.unsigned_abs();
    let _ = write!(out, "{sign}{:02}", east / 3600);
    let (minutes, seconds) = (east / 60 % 60, east % 60);
    if minutes != 0 || seconds != 0 {
        let _ = write!(out, ":{minutes:02}");
    }
    if seconds != 0 {
        let _ = write!(out, ":{seconds:02}");
    }
}

/// An interval in ISO 8601, as PostgreSQL prints it with `intervalstyle = iso_8601`.
fn write_interval(out: &mut String, months: i32, days: i32, micros: i64) {
    let (years, months) = (months / 12, months % 12);
    let hours = micros / 3_600_000_000;
    let minutes = micros / 60_000_000 % 60;
    let seconds = micros / 1_000_000 % 60;
    let fraction = micros % 1_000_000;
    if years == 0 && months == 0 && days == 0 && micros == 0 {
        out.push_str("PT0S");
        return;
    }
    out.push('P');
    for (value, unit) in [(i64::from(years), 'Y'), (i64::from(months), 'M'), (i64::from(days), 'D')] {
        if value != 0 {
            let _ = write!(out, "{value}{unit}");
        }
    }
    if micros != 0 {
        out.push('T');
    }
    for (value, unit) in [(hours, 'H'), (minutes, 'M')] {
        if value != 0 {
            let _ = write!(out, "{value}{unit}");
        }
    }
    if seconds != 0 || fraction != 0 {
        if seconds < 0 || fraction < 0 {
            out.push('-');
        }
        let _ = write!(out, "{}", seconds.unsigned_abs());
        write_fraction(out, fraction);
        out.push('S');
    }
}

/// `inet` and `cidr`: family, bits, is_cidr, length, address.
fn write_inet(out: &mut String, bytes: &[u8]) -> Result<(), String> {
    let [family, bits, is_cidr, length, address @ ..] = bytes else {
        return Err("an inet value shorter than its header".to_owned());
    };
    let (text, max) = match (family, *length as usize, address.len()) {
        (2, 4, 4) => (std::net::Ipv4Addr::new(address[0], address[1], address[2], address[3]).to_string(), 32),
        (3, 16, 16) => {
            let octets: [u8; 16] = fixed(address)?;
            (std::net::Ipv6Addr::from(octets).to_string(), 128)
        }
        _ => return Err("an inet value of an unknown family".to_owned()),
    };
    out.push_str(&text);
    if *is_cidr != 0 || *bits != max {
        let _ = write!(out, "/{bits}");
    }
    Ok(())
}

/// A binary array as JSON: numbers and booleans as such, everything else as strings, NULL
/// as `null`, one nested list per dimension.
fn write_array(out: &mut String, element: &PgType, bytes: &[u8]) -> Result<(), String> {
    let mut reader = Reader(bytes);
    let dimensions = reader.i32()?;
    let _has_nulls = reader.i32()?;
    let _element_oid = reader.i32()?;
    if !(0..=6).contains(&dimensions) {
        return Err(format!("an array of {dimensions} dimensions"));
    }
    let mut lengths = Vec::with_capacity(dimensions as usize);
    for _ in 0..dimensions {
        let length = reader.i32()?;
        let _lower_bound = reader.i32()?;
        lengths.push(usize::try_from(length).map_err(|_| "a negative array length".to_owned())?);
    }
    if lengths.is_empty() {
        out.push_str("[]");
        return Ok(());
    }
    write_dimension(out, element, &lengths, &mut reader)
}

fn write_dimension(out: &mut String, element: &PgType, lengths: &[usize], reader: &mut Reader) -> Result<(), String> {
    out.push('[');
    for i in 0..lengths[0] {
        if i > 0 {
            out.push(',');
        }
        if lengths.len() > 1 {
            write_dimension(out, element, &lengths[1..], reader)?;
            continue;
        }
        match reader.value()? {
            None => out.push_str("null"),
            Some(value) => {
                let mut text = String::new();
                write_text(&mut text, element, value)?;
                let bare = match element {
                    PgType::Bool | PgType::Int2 | PgType::Int4 | PgType::Int8 | PgType::Oid => true,
                    PgType::Float4 | PgType::Float8 | PgType::Decimal { .. } | PgType::NumericText => {
                        text.parse::<f64>().is_ok_and(f64::is_finite)
                    }
                    PgType::Jsonb => true,
                    PgType::Text => false,
                    _ => false,
                };
                if bare {
                    out.push_str(&text);
                } else {
                    out.push_str(&serde_json::Value::String(text).to_string());
                }
            }
        }
    }
    out.push(']');
    Ok(())
}

/// Reads big-endian fields of a binary value.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("a value ends early (wanted {n} more bytes, {} left)", self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(fixed(self.take(2)?)?))
    }

    pub fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(fixed(self.take(4)?)?))
    }

    pub fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(fixed(self.take(8)?)?))
    }

    /// A length-prefixed value, `None` for NULL (length -1).
    pub fn value(&mut self) -> Result<Option<&'a [u8]>, String> {
        let length = self.i32()?;
        if length < 0 {
            return Ok(None);
        }
        self.take(length as usize).map(Some)
    }

    /// A NUL-terminated string.
    pub fn cstr(&mut self) -> Result<&'a str, String> {
        let end = self.0.iter().position(|&b| b == 0).ok_or_else(|| "a string without its end".to_owned())?;
        let text = utf8(&self.0[..end])?;
        self.0 = &self.0[end + 1..];
        Ok(text)
    }
}

/// A `numeric` in binary form: base-10000 digits.
#[derive(Debug)]
struct Numeric {
    digits: Vec<i16>,
    /// Base-10000 exponent of the first digit.
    weight: i16,
    sign: u16,
    /// Decimal digits after the point.
    scale: u16,
}

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

impl Numeric {
    fn parse(bytes: &[u8]) -> Result<Numeric, String> {
        let mut reader = Reader(bytes);
        let count = reader.i16()?;
        let weight = reader.i16()?;
        let sign = reader.i16()? as u16;
        let scale = reader.i16()? as u16;
        let digits = (0..count.max(0)).map(|_| reader.i16()).collect::<Result<Vec<_>, _>>()?;
        if digits.iter().any(|d| !(0..10_000).contains(d)) {
            return Err("a numeric digit out of range".to_owned());
        }
        Ok(Numeric { digits, weight, sign, scale })
    }

    /// The value times 10^`scale`, exact.
    fn to_i128(&self, scale: i8) -> Result<i128, String> {
        match self.sign {
            NUMERIC_NAN | NUMERIC_PINF | NUMERIC_NINF => {
                return Err(format!("`{self}` is not a number a decimal column can hold"));
            }
            _ => {}
        }
        let overflow = || format!("{self} does not fit a decimal");
        let mut value: i128 = 0;
        for (i, &digit) in self.digits.iter().enumerate() {
            // This digit stands for digit * 10^(4 * (weight - i) + scale).
            let exponent = 4 * (i32::from(self.weight) - i as i32) + i32::from(scale);
            let term = if exponent >= 0 {
                i128::from(digit).checked_mul(10i128.checked_pow(exponent as u32).ok_or_else(overflow)?)
            } else {
                let divisor = 10i128.checked_pow(exponent.unsigned_abs()).unwrap_or(i128::MAX);
                if i128::from(digit) % divisor != 0 {
                    return Err(format!("{self} has more than {scale} decimals"));
                }
                Some(i128::from(digit) / divisor)
            };
            value = value.checked_add(term.ok_or_else(overflow)?).ok_or_else(overflow)?;
        }
        Ok(if self.sign == NUMERIC_NEG { -value } else { value })
    }
}

impl std::fmt::Display for Numeric {
    /// As PostgreSQL prints it: `-12.50` keeps the scale's zeros.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.sign {
            NUMERIC_NAN => return f.write_str("NaN"),
            NUMERIC_PINF => return f.write_str("Infinity"),
            NUMERIC_NINF => return f.write_str("-Infinity"),
            _ => {}
        }
        let mut text = String::new();
        if self.sign == NUMERIC_NEG {
            text.push('-');
        }
        let digit = |exponent: i32| -> i16 {
            let index = i32::from(self.weight) - exponent;
            usize::try_from(index).ok().and_then(|i| self.digits.get(i)).copied().unwrap_or(0)
        };
        if self.weight < 0 {
            text.push('0');
        } else {
            for exponent in (0..=i32::from(self.weight)).rev() {
                if exponent == i32::from(self.weight) {
                    let _ = write!(text, "{}", digit(exponent));
                } else {
                    let _ = write!(text, "{:04}", digit(exponent));
                }
            }
        }
        if self.scale > 0 {
            text.push('.');
            let mut fraction = String::new();
            let mut exponent = -1;
            while fraction.len() < usize::from(self.scale) {
                let _ = write!(fraction, "{:04}", digit(exponent));
                exponent -= 1;
            }
            text.push_str(&fraction[..usize::from(self.scale)]);
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(digits: &[i16], weight: i16, sign: u16, scale: u16) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend((digits.len() as i16).to_be_bytes());
        bytes.extend(weight.to_be_bytes());
        bytes.extend(sign.to_be_bytes());
        bytes.extend(scale.to_be_bytes());
        for d in digits {
            bytes.extend(d.to_be_bytes());
        }
        bytes
    }

    #[test]
    fn numerics_print_and_scale_exactly() {
        // 12345.678 = 1|2345|6780, weight 1, scale 3.
        let n = Numeric::parse(&numeric_bytes(&[1, 2345, 6780], 1, 0, 3)).unwrap();
        assert_eq!(n.to_string(), "12345.678");
        assert_eq!(n.to_i128(3).unwrap(), 12_345_678);
        assert_eq!(n.to_i128(5).unwrap(), 1_234_567_800);
        assert!(n.to_i128(2).is_err(), "a decimal would lose a digit");
        let small = Numeric::parse(&numeric_bytes(&[50], -1, NUMERIC_NEG, 4)).unwrap();
        assert_eq!(small.to_string(), "-0.0050");
        assert_eq!(small.to_i128(4).unwrap(), -50);
        let zero = Numeric::parse(&numeric_bytes(&[], 0, 0, 2)).unwrap();
        assert_eq!((zero.to_string(), zero.to_i128(2).unwrap()), ("0.00".to_owned(), 0));
        let big = Numeric::parse(&numeric_bytes(&[1, 0], 1, 0, 0)).unwrap();
        assert_eq!(big.to_string(), "10000");
        let nan = Numeric::parse(&numeric_bytes(&[], 0, NUMERIC_NAN, 0)).unwrap();
        assert_eq!(nan.to_string(), "NaN");
        assert!(nan.to_i128(0).unwrap_err().contains("NaN"));
    }

    #[test]
    fn typmods_choose_decimal_or_text() {
        assert_eq!(numeric(-1), PgType::NumericText);
        assert_eq!(numeric(((12 << 16) | 2) + 4), PgType::Decimal { precision: 12, scale: 2 });
        assert_eq!(numeric(((50 << 16) | 2) + 4), PgType::NumericText);
    }

    #[test]
    fn intervals_print_as_postgres_iso_8601() {
        let text = |months, days, micros| {
            let mut out = String::new();
            write_interval(&mut out, months, days, micros);
            out
        };
        assert_eq!(text(0, 0, 0), "PT0S");
        assert_eq!(text(14, 3, 4 * 3_600_000_000 + 5 * 60_000_000 + 6_500_000), "P1Y2M3DT4H5M6.5S");
        assert_eq!(text(-1, 0, -1_500_000), "P-1MT-1.5S");
        assert_eq!(text(0, 1, 0), "P1D");
    }

    #[test]
    fn times_zones_and_addresses_print_as_postgres_does() {
        let mut out = String::new();
        write_time(&mut out, 13 * 3_600_000_000 + 5 * 60_000_000 + 7_250_000);
        assert_eq!(out, "13:05:07.25");
        let mut out = String::new();
        write_zone(&mut out, -(5 * 3600 + 30 * 60));
        assert_eq!(out, "+05:30");
        let mut out = String::new();
        write_inet(&mut out, &[2, 24, 1, 4, 10, 1, 2, 0]).unwrap();
        assert_eq!(out, "10.1.2.0/24");
        let mut out = String::new();
        write_inet(&mut out, &[2, 32, 0, 4, 127, 0, 0, 1]).unwrap();
        assert_eq!(out, "127.0.0.1");
    }

    #[test]
    fn arrays_become_json() {
        // int4[] {1,NULL,3}
        let mut bytes = Vec::new();
        for v in [1i32, 1, 23, 3, 1] {
            bytes.extend(v.to_be_bytes());
        }
        bytes.extend(4i32.to_be_bytes());
        bytes.extend(1i32.to_be_bytes());
        bytes.extend((-1i32).to_be_bytes());
        bytes.extend(4i32.to_be_bytes());
        bytes.extend(3i32.to_be_bytes());
        let mut out = String::new();
        write_array(&mut out, &PgType::Int4, &bytes).unwrap();
        assert_eq!(out, "[1,null,3]");
        let mut builder = Builder::new(&PgType::Array(Box::new(PgType::Int4)), 1);
        assert!(builder.append(&PgType::Array(Box::new(PgType::Int4)), Some(&bytes[..10])).is_err());
    }

    #[test]
    fn bad_values_leave_a_null_and_say_why() {
        let mut builder = Builder::new(&PgType::Date, 2);
        let error = builder.append(&PgType::Date, Some(&i32::MAX.to_be_bytes())).unwrap_err();
        assert!(error.contains("infinity"), "{error}");
        builder.append(&PgType::Date, Some(&0i32.to_be_bytes())).unwrap();
        let array = builder.finish();
        assert_eq!(array.null_count(), 1);
        assert_eq!(array.len(), 2);
    }
}
