//! inlet-quality: rules over Arrow arrays and batches.
//!
//! Pure: Arrow in, pass masks and counts out. No IO, no async, no Delta. The engine
//! decides what a failing row means (quarantine, drop, warn, fail the run).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod expect;

pub use expect::{Action, Check, Decision, Expectation, ExpectationReport, Gate, GateReport, Kind, Outcome};

use arrow::array::{Array, BooleanArray};
use arrow::compute::kernels::boolean::{and, is_not_null, is_null};
use arrow::error::ArrowError;

/// The result of a rule on a batch: which rows fail, and how many.
#[derive(Debug, Clone)]
pub struct Violations {
    /// `true` for every row that fails the rule.
    pub mask: BooleanArray,
    /// Number of failing rows.
    pub count: usize,
}

impl Violations {
    fn from_mask(mask: BooleanArray) -> Self {
        let count = mask.true_count();
        Violations { mask, count }
    }

    /// Whether no row fails.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Rows whose value was present in `input` but is missing from `typed`, the same column
/// after a non-strict cast: the values that did not parse as the column's type.
pub fn unparsed_values(input: &dyn Array, typed: &dyn Array) -> Result<Violations, ArrowError> {
    if input.len() != typed.len() {
        return Err(ArrowError::InvalidArgumentError(format!(
            "input has {} rows but the typed column has {}",
            input.len(),
            typed.len()
        )));
    }
    // `and` leaves rows null where either side is null; neither side is ever null here.
    let mask = and(&is_not_null(input)?, &is_null(typed)?)?;
    Ok(Violations::from_mask(mask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::compute::{CastOptions, cast_with_options};
    use arrow::datatypes::DataType;

    #[test]
    fn flags_values_that_did_not_parse_and_keeps_nulls() {
        let input = StringArray::from(vec![Some("1"), None, Some("x"), Some("3")]);
        let typed =
            cast_with_options(&input, &DataType::Int64, &CastOptions { safe: true, ..Default::default() }).unwrap();
        let violations = unparsed_values(&input, typed.as_ref()).unwrap();
        assert_eq!(violations.count, 1);
        assert_eq!(violations.mask, BooleanArray::from(vec![false, false, true, false]));
        assert!(!violations.is_empty());
    }

    #[test]
    fn rejects_columns_of_different_lengths() {
        let input = StringArray::from(vec!["1"]);
        let typed = Int64Array::from(vec![1, 2]);
        assert!(unparsed_values(&input, &typed).is_err());
    }
}
