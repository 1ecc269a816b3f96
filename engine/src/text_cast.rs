//! Fast typing of text columns in their canonical forms.
//!
//! Arrow's string casts accept many spellings and are slow on the common ones (a decimal
//! goes through `format!` and `i256` per value; a timestamp through a time-zone database).
//! [`parse_canonical`] types a whole column when every value is in the plain form a
//! producer writes (`-12.30`, `2024-05-01T10:00:00.123Z`, `2024-05-01`, `42`) and gives up
//! on the first value that is not, so the caller casts that column with Arrow instead.
//! Whatever it accepts it types exactly as Arrow's cast does, so which path ran never
//! shows in the data (the tests hold it to that).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, PrimitiveArray, StringArray};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Decimal128Type, Float64Type, Int64Type, TimeUnit,
    TimestampMicrosecondType,
};
use chrono::{NaiveDate, NaiveTime};

pub mod exact;

/// Types `values` as `to` when every non-null value is canonical; `None` otherwise, or when
/// `to` has no fast path. Nulls stay nulls.
pub fn parse_canonical(values: &StringArray, to: &DataType) -> Option<ArrayRef> {
    let array: ArrayRef = match to {
        DataType::Int64 => Arc::new(typed::<Int64Type>(values, parse_i64)?),
        DataType::Float64 => Arc::new(typed::<Float64Type>(values, parse_f64)?),
        DataType::Date32 => Arc::new(typed::<Date32Type>(values, parse_date)?),
        DataType::Decimal128(precision, scale) => {
            let scale_digits = u32::try_from(*scale).ok()?;
            let limit = 10i128.checked_pow(u32::from(*precision))?;
            let array = typed::<Decimal128Type>(values, |v| {
                parse_decimal(v, scale_digits).filter(|d| d.unsigned_abs() < limit.unsigned_abs())
            })?;
            Arc::new(array.with_precision_and_scale(*precision, *scale).ok()?)
        }
        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" => {
            Arc::new(typed::<TimestampMicrosecondType>(values, parse_timestamp_micros)?.with_timezone("UTC"))
        }
        _ => return None,
    };
    Some(array)
}

/// Parses every non-null value; `None` as soon as one does not parse.
fn typed<T: ArrowPrimitiveType>(
    values: &StringArray,
    parse: impl Fn(&[u8]) -> Option<T::Native>,
) -> Option<PrimitiveArray<T>> {
    let mut out = Vec::with_capacity(values.len());
    for value in values.iter() {
        out.push(match value {
            Some(v) => parse(v.as_bytes())?,
            None => T::Native::default(),
        });
    }
    Some(PrimitiveArray::new(out.into(), values.nulls().cloned()))
}

/// `[+-]?[0-9]+`, as Arrow's integer parse reads it.
fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = sign(bytes);
    if digits.is_empty() {
        return None;
    }
    let mut value: i64 = 0;
    for &b in digits {
        let digit = i64::from(digit(b)?);
        value = value.checked_mul(10)?;
        value = if negative { value.checked_sub(digit)? } else { value.checked_add(digit)? };
    }
    Some(value)
}

/// `[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?`; both this and Arrow round correctly.
fn parse_f64(bytes: &[u8]) -> Option<f64> {
    let (_, rest) = sign(bytes);
    let rest = skip_digits(rest, 1)?;
    let rest = match rest.first() {
        Some(b'.') => skip_digits(&rest[1..], 1)?,
        _ => rest,
    };
    let rest = match rest.first() {
        Some(b'e' | b'E') => skip_digits(sign(&rest[1..]).1, 1)?,
        _ => rest,
    };
    if !rest.is_empty() {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// `[+-]?[0-9]*(\.[0-9]*)?` with at least one digit and at most `scale` fraction digits, as
/// an unscaled integer. Longer fractions (which Arrow rounds) are left to Arrow.
fn parse_decimal(bytes: &[u8], scale: u32) -> Option<i128> {
    let (negative, rest) = sign(bytes);
    let (integer, fraction) = match rest.iter().position(|&b| b == b'.') {
        Some(dot) => (&rest[..dot], &rest[dot + 1..]),
        None => (rest, &[][..]),
    };
    if (integer.is_empty() && fraction.is_empty()) || fraction.len() > usize::try_from(scale).ok()? {
        return None;
    }
    let mut value: i128 = 0;
    for &b in integer.iter().chain(fraction) {
        value = value.checked_mul(10)?.checked_add(i128::from(digit(b)?))?;
    }
    let padding = scale - u32::try_from(fraction.len()).ok()?;
    value = value.checked_mul(10i128.checked_pow(padding)?)?;
    Some(if negative { -value } else { value })
}

/// `YYYY-MM-DD`, as days since 1970-01-01.
fn parse_date(bytes: &[u8]) -> Option<i32> {
    if bytes.len() != 10 {
        return None;
    }
    let date = date(bytes)?;
    i32::try_from(date.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days()).ok()
}

/// `YYYY-MM-DD[T ]HH:MM:SS(.f{1,9})?(Z|[+-]HH:MM)`, as microseconds since the epoch, UTC.
/// Fraction digits beyond microseconds are truncated, as Arrow does.
fn parse_timestamp_micros(bytes: &[u8]) -> Option<i64> {
    if bytes.len() < 20 || !matches!(bytes[10], b'T' | b't' | b' ') || bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let date = date(bytes)?;
    let hour = two_digits(&bytes[11..13])?;
    let minute = two_digits(&bytes[14..16])?;
    let second = two_digits(&bytes[17..19])?;
    let mut rest = &bytes[19..];
    let mut nanos: u32 = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        for &b in &fraction[..digits] {
            nanos = nanos * 10 + u32::from(b - b'0');
        }
        nanos *= 10u32.pow(u32::try_from(9 - digits).ok()?);
        rest = &fraction[digits..];
    }
    let offset_secs: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = two_digits(&[*h1, *h2])?;
            let minutes = two_digits(&[*m1, *m2])?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let secs = i64::from(hours * 3600 + minutes * 60);
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    let local = date.and_time(time).and_utc();
    local.timestamp_micros().checked_sub(offset_secs.checked_mul(1_000_000)?)
}

/// The `YYYY-MM-DD` at the start of `bytes` (at least 10 long).
fn date(bytes: &[u8]) -> Option<NaiveDate> {
    if bytes.get(4) != Some(&b'-') || bytes.get(7) != Some(&b'-') {
        return None;
    }
    let year = two_digits(&bytes[0..2])? * 100 + two_digits(&bytes[2..4])?;
    let month = two_digits(&bytes[5..7])?;
    let day = two_digits(&bytes[8..10])?;
    NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)
}

fn two_digits(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [a, b] => Some(digit(*a)? * 10 + digit(*b)?),
        _ => None,
    }
}

fn digit(b: u8) -> Option<u32> {
    b.is_ascii_digit().then(|| u32::from(b - b'0'))
}

fn sign(bytes: &[u8]) -> (bool, &[u8]) {
    match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        Some(b'+') => (false, &bytes[1..]),
        _ => (false, bytes),
    }
}

/// What follows at least `min` leading ASCII digits; `None` when there are fewer.
fn skip_digits(bytes: &[u8], min: usize) -> Option<&[u8]> {
    let n = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    (n >= min).then(|| &bytes[n..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::timestamp_type;
    use arrow::compute::{CastOptions, cast_with_options};
    use proptest::prelude::*;

    fn arrow_cast(values: &StringArray, to: &DataType) -> ArrayRef {
        cast_with_options(values, to, &CastOptions { safe: true, ..Default::default() }).unwrap()
    }

    /// Fast path and Arrow agree wherever the fast path answers, and it answers for `expect_fast`.
    fn agree(values: &[Option<&str>], to: &DataType, expect_fast: bool) {
        let input = StringArray::from(values.to_vec());
        let fast = parse_canonical(&input, to);
        assert_eq!(fast.is_some(), expect_fast, "{values:?} as {to}");
        if let Some(fast) = fast {
            let reference = arrow_cast(&input, to);
            assert_eq!(fast.as_ref(), reference.as_ref(), "{values:?} as {to}");
        }
    }

    #[test]
    fn canonical_values_match_arrow() {
        agree(&[Some("0"), Some("-42"), Some("+7"), None, Some("9223372036854775807")], &DataType::Int64, true);
        agree(&[Some("-9223372036854775808")], &DataType::Int64, true);
        agree(&[Some("1.5"), Some("-0.25"), Some("3e10"), Some("2.5E-3"), None], &DataType::Float64, true);
        agree(
            &[Some("12.30"), Some("-0.05"), Some("7"), Some(".5"), Some("3."), None],
            &DataType::Decimal128(18, 2),
            true,
        );
        agree(&[Some("99.99")], &DataType::Decimal128(4, 2), true);
        agree(&[Some("2024-02-29"), Some("1969-12-31"), None], &DataType::Date32, true);
        agree(
            &[
                Some("2024-05-01T10:00:00Z"),
                Some("2024-05-01 10:00:00.123456789+02:00"),
                Some("1969-12-31T23:59:59.5Z"),
                Some("2024-05-01T10:00:00-05:30"),
                None,
            ],
            &timestamp_type(),
            true,
        );
    }

    #[test]
    fn other_spellings_are_left_to_arrow() {
        agree(&[Some("1"), Some(" 2")], &DataType::Int64, false);
        agree(&[Some("9223372036854775808")], &DataType::Int64, false);
        agree(&[Some("x")], &DataType::Int64, false);
        agree(&[Some("inf")], &DataType::Float64, false);
        agree(&[Some("1.005")], &DataType::Decimal128(18, 2), false);
        agree(&[Some("100.00")], &DataType::Decimal128(4, 2), false);
        agree(&[Some("-")], &DataType::Decimal128(4, 2), false);
        agree(&[Some("2023-02-29")], &DataType::Date32, false);
        agree(&[Some("2024-05-01T10:00:00")], &timestamp_type(), false);
        agree(&[Some("2024-05-01T24:00:00Z")], &timestamp_type(), false);
        agree(&[Some("2024-05-01T10:00:00+0200")], &timestamp_type(), false);
        agree(&[Some("1")], &DataType::Boolean, false);
    }

    fn decimal_text() -> impl Strategy<Value = String> {
        ("[+-]?", "[0-9]{0,17}", proptest::option::of("[0-9]{0,3}")).prop_map(|(s, i, f)| match f {
            Some(f) => format!("{s}{i}.{f}"),
            None => format!("{s}{i}"),
        })
    }

    fn timestamp_text() -> impl Strategy<Value = String> {
        (
            1900i32..2200,
            1u32..13,
            1u32..32,
            0u32..25,
            0u32..61,
            0u32..61,
            proptest::option::of("[0-9]{1,10}"),
            prop_oneof![Just("Z".to_owned()), "[+-](0[0-9]|1[0-9]|2[0-4]):[0-6][0-9]", Just(String::new())],
        )
            .prop_map(|(y, mo, d, h, mi, s, f, z)| {
                let f = f.map(|f| format!(".{f}")).unwrap_or_default();
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{f}{z}")
            })
    }

    proptest! {
        #[test]
        fn decimals_match_arrow(values in proptest::collection::vec(decimal_text(), 1..3), precision in 12u8..=38, scale in 0i8..=4) {
            let scale = scale.min(precision as i8);
            let input = StringArray::from(values.iter().map(String::as_str).collect::<Vec<_>>());
            let to = DataType::Decimal128(precision, scale);
            if let Some(fast) = parse_canonical(&input, &to) {
                let reference = arrow_cast(&input, &to);
                prop_assert_eq!(fast.as_ref(), reference.as_ref());
            }
        }

        #[test]
        fn timestamps_match_arrow(values in proptest::collection::vec(timestamp_text(), 1..3)) {
            let input = StringArray::from(values.iter().map(String::as_str).collect::<Vec<_>>());
            if let Some(fast) = parse_canonical(&input, &timestamp_type()) {
                let reference = arrow_cast(&input, &timestamp_type());
                prop_assert_eq!(fast.as_ref(), reference.as_ref());
            }
        }

        #[test]
        fn integers_and_doubles_match_arrow(values in proptest::collection::vec("[+-]?[0-9]{1,20}(\\.[0-9]{1,5})?(e[+-]?[0-9]{1,3})?", 1..3)) {
            let input = StringArray::from(values.iter().map(String::as_str).collect::<Vec<_>>());
            for to in [DataType::Int64, DataType::Float64] {
                if let Some(fast) = parse_canonical(&input, &to) {
                    let reference = arrow_cast(&input, &to);
                    prop_assert_eq!(fast.as_ref(), reference.as_ref());
                }
            }
        }
    }
}
