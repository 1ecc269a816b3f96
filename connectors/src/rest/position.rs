//! Where a REST source stands: what it commits with its rows.
//!
//! A resource is read in sweeps: from a start value (incremental) or from the beginning, page
//! after page to the last. A [`Stream`] is one line of sweeps: the resource's, or one per
//! parent record for a child resource, and one per backfill window. Between sweeps a stream
//! keeps its cursor (the highest value landed) and the records landed within `lag_secs` of
//! it (by a hash of their primary key and cursor value), since the next sweep asks from
//! `cursor - lag` and must not land them again. During a sweep it keeps where the next page
//! is, so a run killed between two commits resumes at the page after the last one committed.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::paginate::PageState;

/// The position a REST source commits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Position {
    pub format: u32,
    /// Streams by key: `""` for a resource without parent; a child's parent record and a
    /// backfill window name theirs ([`stream_key`]).
    #[serde(default)]
    pub streams: BTreeMap<String, Stream>,
    /// Where the sweep over the parent's records stands (child resources, during a sweep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parents: Option<ParentSweep>,
}

/// The version of [`Position`] written.
pub(crate) const FORMAT: u32 = 1;

/// One line of sweeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stream {
    /// The highest cursor value landed, as the API wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Records landed within `lag` of `cursor`: cursor value -> record hashes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub boundary: BTreeMap<String, Vec<String>>,
    /// The sweep in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<Sweep>,
}

/// A sweep in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sweep {
    /// The start value it asks from (incremental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Where the next page is.
    pub next: PageState,
    /// Pages read so far.
    pub pages: u64,
    /// The highest cursor value seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    /// Records landed within `lag` of `max`: cursor value -> record hashes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seen: BTreeMap<String, Vec<String>>,
    /// How `paginator = "auto"` reads this API, once the first page told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected: Option<String>,
    /// The hash of a body that could not be read nor followed, quarantined already: the same
    /// body is not quarantined again when the page is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<String>,
    /// Where the page at `next` linked back to, last time: a page of this sweep (a loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub looped: Option<PageState>,
}

impl Sweep {
    pub fn new(start: Option<String>) -> Sweep {
        Sweep {
            start,
            next: PageState::First,
            pages: 0,
            max: None,
            seen: BTreeMap::new(),
            detected: None,
            stuck: None,
            looped: None,
        }
    }
}

/// Where the sweep over a parent's records stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ParentSweep {
    /// The parent's page being worked through.
    pub page: PageState,
    /// Its number in the parent's sweep.
    pub pages: u64,
    /// Records of that page whose children are all read.
    pub done: u64,
    /// The key of the record finished last: a resumed sweep goes on after it, wherever the
    /// page (read again) now has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected: Option<String>,
}

/// The key of a stream: a parent record's values and a backfill window, or `""`.
pub(crate) fn stream_key(parent: Option<&str>, window: Option<&str>) -> String {
    match (parent, window) {
        (None, None) => String::new(),
        (Some(parent), None) => parent.to_owned(),
        (None, Some(window)) => format!("window {window}"),
        (Some(parent), Some(window)) => format!("{parent} window {window}"),
    }
}

/// A cursor value, ordered by what it is: an instant, a number, or text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CursorValue {
    Time(chrono::DateTime<chrono::Utc>),
    Number(f64),
    Text(String),
}

impl CursorValue {
    pub fn parse(text: &str) -> CursorValue {
        let trimmed = text.trim();
        if let Ok(time) = chrono::DateTime::parse_from_rfc3339(trimmed) {
            return CursorValue::Time(time.with_timezone(&chrono::Utc));
        }
        for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
            if let Ok(time) = chrono::DateTime::parse_from_str(trimmed, format) {
                return CursorValue::Time(time.with_timezone(&chrono::Utc));
            }
        }
        // Without an offset (`2024-01-01 10:00:00`, or a date): read as UTC.
        for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
            if let Ok(time) = chrono::NaiveDateTime::parse_from_str(trimmed, format) {
                return CursorValue::Time(time.and_utc());
            }
        }
        if let Ok(date) = chrono::NaiveDate::parse_from_str(trimmed, "%Y-%m-%d") {
            return CursorValue::Time(date.and_time(chrono::NaiveTime::MIN).and_utc());
        }
        if let Ok(number) = trimmed.parse::<f64>()
            && number.is_finite()
        {
            return CursorValue::Number(number);
        }
        CursorValue::Text(trimmed.to_owned())
    }

    /// This value moved back by `lag_secs` (instants only), as text.
    pub fn minus_secs(&self, lag_secs: u64, original: &str) -> String {
        match self {
            CursorValue::Time(time) if lag_secs > 0 => {
                let back = i64::try_from(lag_secs)
                    .ok()
                    .and_then(chrono::Duration::try_seconds)
                    .and_then(|lag| time.checked_sub_signed(lag))
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
                // Written as the API wrote it: a time without an offset stays without one, a
                // date stays a date (the day the earlier time falls on).
                match naive_format(original.trim()) {
                    Some(format) => back.naive_utc().format(format).to_string(),
                    None => back.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                }
            }
            _ => original.to_owned(),
        }
    }
}

/// The format of a time written without an offset, if `text` is one.
fn naive_format(text: &str) -> Option<&'static str> {
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .into_iter()
        .find(|format| chrono::NaiveDateTime::parse_from_str(text, format).is_ok())
        .or_else(|| chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok().then_some("%Y-%m-%d"))
}

/// Orders two cursor values written by an API; values of different kinds by their text.
pub(crate) fn compare(a: &str, b: &str) -> Ordering {
    match (CursorValue::parse(a), CursorValue::parse(b)) {
        (CursorValue::Time(x), CursorValue::Time(y)) => x.cmp(&y),
        (CursorValue::Number(x), CursorValue::Number(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => a.cmp(b),
    }
}

/// The larger of two cursor values.
pub(crate) fn max_of(a: Option<String>, b: &str) -> String {
    match a {
        Some(a) if compare(&a, b) != Ordering::Less => a,
        _ => b.to_owned(),
    }
}

/// Whether `value` is within `lag_secs` of `top`: at or above `top - lag`.
pub(crate) fn within_lag(value: &str, top: &str, lag_secs: u64) -> bool {
    let floor = CursorValue::parse(top).minus_secs(lag_secs, top);
    compare(value, &floor) != Ordering::Less
}

/// Keeps the hashes of `set` within `lag_secs` of `top`.
pub(crate) fn prune(set: &mut BTreeMap<String, Vec<String>>, top: &str, lag_secs: u64) {
    set.retain(|cursor, _| within_lag(cursor, top, lag_secs));
}

/// A record's identity within its stream: a hash of its primary key values (or, without a
/// primary key, of all its fields) and its cursor value.
pub(crate) fn record_hash(key: &[(&str, Option<&str>)], cursor: &str) -> String {
    let mut hasher = sha2::Sha256::new();
    for (name, value) in key {
        hasher.update(name.as_bytes());
        hasher.update([0x1f]);
        match value {
            Some(value) => {
                hasher.update([1]);
                hasher.update(value.as_bytes());
            }
            None => hasher.update([0]),
        }
        hasher.update([0x1e]);
    }
    hasher.update(cursor.as_bytes());
    hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_order_by_kind() {
        assert_eq!(compare("2024-01-01T00:00:00Z", "2024-01-01T01:00:00+02:00"), Ordering::Greater);
        assert_eq!(compare("9", "10"), Ordering::Less);
        assert_eq!(compare("b", "a"), Ordering::Greater);
        assert_eq!(max_of(Some("2024-01-02T00:00:00Z".into()), "2024-01-01T00:00:00Z"), "2024-01-02T00:00:00Z");
        assert_eq!(max_of(None, "5"), "5");
        let back = CursorValue::parse("2024-01-01T00:01:00Z").minus_secs(60, "x");
        assert_eq!(back, "2024-01-01T00:00:00Z");
        assert_eq!(CursorValue::parse("17").minus_secs(60, "17"), "17");
        assert!(within_lag("2024-01-01T00:00:30Z", "2024-01-01T00:01:00Z", 60));
        assert!(!within_lag("2024-01-01T00:00:30Z", "2024-01-01T00:01:00Z", 10));
        assert!(within_lag("5", "5", 0) && !within_lag("4", "5", 0));
        // Times without an offset are UTC; a date is its midnight.
        assert_eq!(compare("2024-01-01 10:00:00", "2024-01-01T09:00:00Z"), Ordering::Greater);
        assert_eq!(compare("2024-01-02", "2024-01-01T23:59:59Z"), Ordering::Greater);
        assert!(matches!(CursorValue::parse("2024-01-01 10:00:00.5"), CursorValue::Time(_)));
        // Moved back, they are written as they came.
        assert_eq!(
            CursorValue::parse("2024-01-01 10:00:00").minus_secs(60, "2024-01-01 10:00:00"),
            "2024-01-01 09:59:00"
        );
        assert_eq!(
            CursorValue::parse("2024-01-01T10:00:00").minus_secs(60, "2024-01-01T10:00:00"),
            "2024-01-01T09:59:00"
        );
        assert_eq!(CursorValue::parse("2024-01-02").minus_secs(3600, "2024-01-02"), "2024-01-01");
        // A lag beyond the calendar does not overflow.
        assert!(CursorValue::parse("2024-01-01T00:00:00Z").minus_secs(u64::MAX, "x").starts_with('-'));
    }

    #[test]
    fn hashes_name_key_and_cursor() {
        let a = record_hash(&[("id", Some("1"))], "t1");
        assert_eq!(a.len(), 16);
        assert_eq!(a, record_hash(&[("id", Some("1"))], "t1"));
        assert_ne!(a, record_hash(&[("id", Some("1"))], "t2"));
        assert_ne!(a, record_hash(&[("id", Some("2"))], "t1"));
        assert_ne!(record_hash(&[("id", None)], ""), record_hash(&[("id", Some(""))], ""));
    }

    #[test]
    fn positions_round_trip() {
        let mut position = Position { format: FORMAT, ..Default::default() };
        let mut sweep = Sweep::new(Some("2024-01-01T00:00:00Z".into()));
        sweep.next = PageState::Url { url: "http://h/x?page=3".into() };
        sweep.pages = 2;
        position.streams.insert(stream_key(None, None), Stream { sweep: Some(sweep), ..Default::default() });
        let json = serde_json::to_value(&position).unwrap();
        assert_eq!(serde_json::from_value::<Position>(json).unwrap(), position);
    }
}
