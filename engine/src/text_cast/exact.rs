//! Typing text while it is decoded, only where the typed value shows as the same text.
//!
//! A decoder that knows the type a column will have in the table (a hint, or the table's
//! schema) types each value as it reads it, instead of copying it into a string column to
//! cast afterwards. It does so only for values spelled exactly as the type is displayed
//! (`42`, `-12.30` at scale 2, `2024-05-01`, `2024-05-01T10:00:00.123Z`), so a typed column
//! shows the same text as the input wherever a row is shown again: a quarantined row's raw
//! record, `_rescued_data`. At the first value spelled any other way (`007`, `+5`, an empty
//! field, a time zone offset) the column turns back to text for the rest of its chunk, the
//! values typed so far shown as the text they were read from, and conforming types it as it
//! types every text column.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Date32Builder, Decimal128Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder, new_empty_array,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use super::{parse_date, parse_decimal, parse_i64, parse_timestamp_micros};

/// One column of a decoded chunk: typed while every value is in its type's exact spelling,
/// text from the first value that is not.
pub struct ChunkColumn {
    state: State,
    capacity: usize,
    text_bytes: usize,
}

enum State {
    Typed(Typed),
    Text(StringBuilder),
}

enum Typed {
    Int64(Int64Builder),
    Int32(Int32Builder),
    Date32(Date32Builder),
    Decimal128 { builder: Decimal128Builder, scale: usize, limit: u128 },
    Timestamp(TimestampMicrosecondBuilder),
}

impl Typed {
    /// A builder for `target`, when values of it can be typed exactly as they are read (and
    /// shown again: a type Arrow cannot display here, a time zone it cannot parse, stays text).
    fn new(target: &DataType, capacity: usize) -> Option<Typed> {
        let typed = match target {
            DataType::Int64 => Typed::Int64(Int64Builder::with_capacity(capacity)),
            DataType::Int32 => Typed::Int32(Int32Builder::with_capacity(capacity)),
            DataType::Date32 => Typed::Date32(Date32Builder::with_capacity(capacity)),
            DataType::Decimal128(precision, scale) => {
                let scale_digits = usize::try_from(*scale).ok()?;
                let limit = 10u128.checked_pow(u32::from(*precision))?;
                let builder =
                    Decimal128Builder::with_capacity(capacity).with_precision_and_scale(*precision, *scale).ok()?;
                Typed::Decimal128 { builder, scale: scale_digits, limit }
            }
            DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" => {
                Typed::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone(tz.clone()))
            }
            _ => return None,
        };
        ArrayFormatter::try_new(new_empty_array(target).as_ref(), &FormatOptions::default()).ok()?;
        Some(typed)
    }

    /// Appends `value` typed; false (and nothing appended) when it is not spelled exactly.
    fn append(&mut self, value: &[u8]) -> bool {
        match self {
            Typed::Int64(b) => exact_i64(value).map(|v| b.append_value(v)).is_some(),
            Typed::Int32(b) => {
                exact_i64(value).and_then(|v| i32::try_from(v).ok()).map(|v| b.append_value(v)).is_some()
            }
            Typed::Date32(b) => parse_date(value).map(|v| b.append_value(v)).is_some(),
            Typed::Decimal128 { builder, scale, limit } => exact_decimal(value, *scale)
                .filter(|v| v.unsigned_abs() < *limit)
                .map(|v| builder.append_value(v))
                .is_some(),
            Typed::Timestamp(b) => exact_timestamp_micros(value).map(|v| b.append_value(v)).is_some(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Typed::Int64(b) => b.append_null(),
            Typed::Int32(b) => b.append_null(),
            Typed::Date32(b) => b.append_null(),
            Typed::Decimal128 { builder, .. } => builder.append_null(),
            Typed::Timestamp(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Typed::Int64(b) => Arc::new(b.finish()),
            Typed::Int32(b) => Arc::new(b.finish()),
            Typed::Date32(b) => Arc::new(b.finish()),
            Typed::Decimal128 { builder, .. } => Arc::new(builder.finish()),
            Typed::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

impl ChunkColumn {
    /// A column of up to `capacity` values, typed as `target` where it can be, text
    /// otherwise; `text_bytes` sizes the text buffer.
    pub fn new(target: Option<&DataType>, capacity: usize, text_bytes: usize) -> ChunkColumn {
        let state = match target.and_then(|t| Typed::new(t, capacity)) {
            Some(typed) => State::Typed(typed),
            None => State::Text(StringBuilder::with_capacity(capacity, text_bytes)),
        };
        ChunkColumn { state, capacity, text_bytes }
    }

    /// Appends a value as read.
    pub fn append(&mut self, value: &str) {
        if let State::Typed(typed) = &mut self.state {
            if typed.append(value.as_bytes()) {
                return;
            }
            self.turn_to_text();
        }
        if let State::Text(text) = &mut self.state {
            text.append_value(value);
        }
    }

    /// Appends an integer read as a number (JSON): typed straight into an integer column,
    /// as its text otherwise.
    pub fn append_integer(&mut self, value: i64) {
        if let State::Typed(typed) = &mut self.state {
            match typed {
                Typed::Int64(b) => return b.append_value(value),
                Typed::Int32(b) => {
                    if let Ok(value) = i32::try_from(value) {
                        return b.append_value(value);
                    }
                }
                _ => {}
            }
        }
        self.append(&value.to_string());
    }

    pub fn append_null(&mut self) {
        match &mut self.state {
            State::Typed(typed) => typed.append_null(),
            State::Text(text) => text.append_null(),
        }
    }

    pub fn append_nulls(&mut self, n: usize) {
        (0..n).for_each(|_| self.append_null());
    }

    /// Bytes of text held (0 while typed): the next chunk's text buffer starts that big.
    pub fn text_bytes(&self) -> usize {
        match &self.state {
            State::Typed(_) => 0,
            State::Text(text) => text.values_slice().len(),
        }
    }

    /// The values appended since the last call: typed, or text.
    pub fn finish(&mut self) -> ArrayRef {
        match &mut self.state {
            State::Typed(typed) => typed.finish(),
            State::Text(text) => Arc::new(text.finish()),
        }
    }

    /// Turns the column to text: the values typed so far become the text they were read
    /// from, which every typed value shows as.
    fn turn_to_text(&mut self) {
        let State::Typed(typed) = &mut self.state else { return };
        let values = typed.finish();
        let mut text = StringBuilder::with_capacity(self.capacity, self.text_bytes.max(values.len() * 8));
        match ArrayFormatter::try_new(values.as_ref(), &FormatOptions::default()) {
            Ok(formatter) => {
                for row in 0..values.len() {
                    if values.is_null(row) {
                        text.append_null();
                    } else {
                        text.append_value(formatter.value(row).to_string());
                    }
                }
            }
            // Never here: a column is typed only when its type has a formatter (`Typed::new`).
            Err(_) => (0..values.len()).for_each(|_| text.append_null()),
        }
        self.state = State::Text(text);
    }
}

/// `0` or `-?[1-9][0-9]*`: an integer as it is displayed.
fn exact_i64(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        [b'0'] => digits.len() == bytes.len(),
        [b'1'..=b'9', ..] => true,
        _ => false,
    };
    if canonical { parse_i64(bytes) } else { None }
}

/// `-?(0|[1-9][0-9]*)` then `.` and exactly `scale` digits (none at scale 0), not negative
/// zero: a decimal as it is displayed, unscaled.
fn exact_decimal(bytes: &[u8], scale: usize) -> Option<i128> {
    let negative = bytes.first() == Some(&b'-');
    let unsigned = if negative { &bytes[1..] } else { bytes };
    let integer_len = unsigned.len().checked_sub(if scale == 0 { 0 } else { scale + 1 })?;
    let (integer, fraction) = unsigned.split_at(integer_len);
    let integer_ok = match integer {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    let fraction_ok = match fraction {
        [] => scale == 0,
        [b'.', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !(integer_ok && fraction_ok) {
        return None;
    }
    let value = parse_decimal(bytes, u32::try_from(scale).ok()?)?;
    (value != 0 || !negative).then_some(value)
}

/// `YYYY-MM-DDTHH:MM:SS(.fff|.ffffff)?Z` as a UTC timestamp is displayed: no fraction for a
/// whole second, three digits for a whole millisecond, six otherwise.
fn exact_timestamp_micros(bytes: &[u8]) -> Option<i64> {
    let fraction_digits = match bytes.len() {
        20 => 0,
        24 => 3,
        27 => 6,
        _ => return None,
    };
    if bytes[10] != b'T' || bytes[bytes.len() - 1] != b'Z' || (fraction_digits > 0 && bytes[19] != b'.') {
        return None;
    }
    let micros = parse_timestamp_micros(bytes)?;
    let within_second = micros.rem_euclid(1_000_000);
    let shown = match within_second {
        0 => 0,
        m if m % 1000 == 0 => 3,
        _ => 6,
    };
    (shown == fraction_digits).then_some(micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::timestamp_type;
    use arrow::array::StringArray;
    use arrow::compute::{CastOptions, cast_with_options};
    use proptest::prelude::*;

    /// Appends `values` to a column typed as `to`, and what it gives.
    fn column(to: &DataType, values: &[Option<&str>]) -> ArrayRef {
        let mut column = ChunkColumn::new(Some(to), values.len(), 0);
        for value in values {
            match value {
                Some(v) => column.append(v),
                None => column.append_null(),
            }
        }
        column.finish()
    }

    /// Text shown again the way quarantine shows a row.
    fn shown(array: &ArrayRef) -> Vec<Option<String>> {
        let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()).unwrap();
        (0..array.len()).map(|i| array.is_valid(i).then(|| formatter.value(i).to_string())).collect()
    }

    /// Whatever the column holds, typed or text, shows the input again, and types as Arrow's
    /// cast of the input text does.
    fn holds(to: &DataType, values: &[Option<&str>], typed: bool) {
        let array = column(to, values);
        assert_eq!(array.data_type() == to, typed, "{values:?} as {to}: {:?}", array.data_type());
        let expected: Vec<Option<String>> = values.iter().map(|v| v.map(str::to_owned)).collect();
        assert_eq!(shown(&array), expected, "{values:?} as {to}");
        let text = StringArray::from(values.to_vec());
        let options = CastOptions { safe: true, ..Default::default() };
        let by_arrow = cast_with_options(&text, to, &options).unwrap();
        let ours = cast_with_options(&array, to, &options).unwrap();
        assert_eq!(&ours, &by_arrow, "{values:?} as {to}");
    }

    #[test]
    fn exact_spellings_are_typed() {
        holds(&DataType::Int64, &[Some("0"), Some("-12"), None, Some("9223372036854775807")], true);
        holds(&DataType::Int32, &[Some("2147483647"), Some("-2147483648")], true);
        holds(&DataType::Date32, &[Some("2024-02-29"), None, Some("0001-01-01")], true);
        holds(&DataType::Decimal128(18, 2), &[Some("0.00"), Some("-0.50"), Some("12.30"), Some("-123456.78")], true);
        holds(&DataType::Decimal128(10, 0), &[Some("0"), Some("-7"), Some("9999999999")], true);
        holds(
            &timestamp_type(),
            &[Some("2024-05-01T10:00:00Z"), Some("2024-05-01T10:00:00.120Z"), Some("1969-12-31T23:59:59.000001Z")],
            true,
        );
    }

    #[test]
    fn other_spellings_turn_the_column_to_text_and_keep_what_was_typed() {
        holds(&DataType::Int64, &[Some("1"), None, Some("007"), Some("2")], false);
        holds(&DataType::Int64, &[Some("5"), Some("+5")], false);
        holds(&DataType::Int64, &[Some("-0")], false);
        holds(&DataType::Int64, &[Some("1"), Some("")], false);
        holds(&DataType::Int64, &[Some("9223372036854775808")], false);
        holds(&DataType::Int32, &[Some("1"), Some("2147483648")], false);
        holds(&DataType::Date32, &[Some("2024-01-01"), Some("2024-1-1")], false);
        holds(&DataType::Decimal128(18, 2), &[Some("1.50"), Some("1.5"), Some("2")], false);
        holds(&DataType::Decimal128(18, 2), &[Some("-0.00"), Some("01.00"), Some("1.0.0")], false);
        holds(&DataType::Decimal128(4, 2), &[Some("10.00"), Some("100.00")], false);
        holds(&DataType::Decimal128(10, 0), &[Some("1.")], false);
        holds(
            &timestamp_type(),
            &[Some("2024-05-01T10:00:00Z"), Some("2024-05-01T10:00:00.000Z"), Some("2024-05-01 10:00:00Z")],
            false,
        );
        holds(&timestamp_type(), &[Some("2024-05-01T10:00:00.120000Z")], false);
        holds(&timestamp_type(), &[Some("2024-05-01T12:00:00+02:00")], false);
        holds(&timestamp_type(), &[Some("2024-05-01T10:00:00z")], false);
    }

    #[test]
    fn integers_read_as_numbers_are_typed_or_shown_as_json_wrote_them() {
        let mut column = ChunkColumn::new(Some(&DataType::Int32), 4, 0);
        column.append_integer(7);
        column.append_nulls(1);
        column.append_integer(-2_147_483_648);
        assert_eq!(column.finish().data_type(), &DataType::Int32);
        column.append_integer(2_147_483_648);
        column.append_integer(-1);
        let array = column.finish();
        assert_eq!(array.data_type(), &DataType::Utf8);
        assert_eq!(shown(&array), [Some("2147483648".to_owned()), Some("-1".to_owned())]);
        let mut column = ChunkColumn::new(Some(&DataType::Decimal128(10, 2)), 1, 0);
        column.append_integer(12);
        assert_eq!(shown(&column.finish()), [Some("12".to_owned())]);
    }

    #[test]
    fn other_types_stay_text() {
        for to in [DataType::Float64, DataType::Boolean, DataType::Utf8] {
            let array = column(&to, &[Some("1")]);
            assert_eq!(array.data_type(), &DataType::Utf8);
        }
    }

    fn decimal_text() -> impl Strategy<Value = String> {
        "-?(0|[1-9][0-9]{0,10})(\\.[0-9]{0,3})?"
    }

    fn timestamp_text() -> impl Strategy<Value = String> {
        (
            0u32..10_000,
            1u32..=12,
            1u32..=28,
            0u32..24,
            0u32..60,
            0u32..60,
            prop_oneof![Just(String::new()), "\\.[0-9]{3}", "\\.[0-9]{6}", "\\.[0-9]{1,9}"],
        )
            .prop_map(|(y, mo, d, h, mi, s, f)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{f}Z"))
    }

    proptest! {
        // Typed or not, the column always shows its input again and types as Arrow does.
        #[test]
        fn integers_show_their_input(values in proptest::collection::vec("[+-]?[0-9]{1,20}", 1..4)) {
            let values: Vec<Option<&str>> = values.iter().map(|v| Some(v.as_str())).collect();
            let array = column(&DataType::Int64, &values);
            holds(&DataType::Int64, &values, array.data_type() == &DataType::Int64);
        }

        #[test]
        fn decimals_show_their_input(values in proptest::collection::vec(decimal_text(), 1..4), scale in 0i8..=3) {
            let to = DataType::Decimal128(12, scale);
            let values: Vec<Option<&str>> = values.iter().map(|v| Some(v.as_str())).collect();
            let array = column(&to, &values);
            holds(&to, &values, array.data_type() == &to);
        }

        #[test]
        fn timestamps_show_their_input(values in proptest::collection::vec(timestamp_text(), 1..4)) {
            let to = timestamp_type();
            let values: Vec<Option<&str>> = values.iter().map(|v| Some(v.as_str())).collect();
            let array = column(&to, &values);
            holds(&to, &values, array.data_type() == &to);
        }
    }
}
