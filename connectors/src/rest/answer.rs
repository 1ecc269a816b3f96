//! What a response body answers: where its records are (`data_selector`, or chosen), the
//! records decoded, and whether a body without records is an empty page or an error.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::Schema;
use inlet_engine::config::JsonPath;
use inlet_engine::source::RawChunk;
use serde_json::Value;

use crate::Error;

/// Bodies at least this big are decoded on a blocking thread.
const DECODE_ON_BLOCKING_BYTES: usize = 64 * 1024;

/// How deep in a body signs of an error or of records are looked for.
const LOOK_DEPTH: usize = 8;

/// Whether a body with nothing where the records belong is an empty answer (an API that
/// leaves an empty list out, or writes it `null`), not an error: it is `null`, or an object
/// in which nothing says error or failure ([`says_error`]) and nothing says there are
/// records after all ([`says_records`]). Taking an error for the end would move a cursor
/// past what the API did not give, so anything in doubt is not the end.
pub(super) fn empty_answer(body: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Null) => true,
        Ok(Value::Object(map)) => {
            !map.iter().any(|(key, value)| says_error(key, value, 0, true) || says_records(key, value, 0))
        }
        _ => false,
    }
}

/// A key as compared: lower case, without `_` and `-`.
fn plain(key: &str) -> String {
    key.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect()
}

/// Whether a value says something: not `null`, `false`, `0`, `""`, `[]` or `{}`.
fn set(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(text) => !text.trim().is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
        Value::Bool(true) => true,
    }
}

/// Whether a field, or one inside it, says error or failure: an `error`, `errors`, `fault`
/// or `exception` field that is set, `success` or `ok` false, a `status` or `code` of 400 or
/// more or one that reads as a failure; with `strict`, also a `message`, `detail` or
/// `reason` (and at the top, a `title`), as error objects carry.
fn says_error(key: &str, value: &Value, depth: usize, strict: bool) -> bool {
    let key = plain(key);
    if ["error", "fault", "exception", "failure"].iter().any(|word| key.contains(word)) {
        return set(value);
    }
    let failing = |text: &str| {
        let text = text.to_ascii_lowercase();
        ["error", "fail", "denied", "invalid", "forbidden", "unauthori", "unavailable", "exceeded"]
            .iter()
            .any(|word| text.contains(word))
    };
    let said = match (key.as_str(), value) {
        ("success" | "ok" | "succeeded", Value::Bool(false)) => true,
        ("status" | "statuscode" | "httpstatus" | "code" | "httpcode", Value::Number(n)) => {
            n.as_f64().is_some_and(|n| n >= 400.0)
        }
        ("status" | "state" | "result" | "outcome", Value::String(text)) => failing(text),
        ("message" | "detail" | "details" | "reason" | "msg", _) => strict && set(value),
        ("title", _) => strict && depth == 0 && set(value),
        _ => false,
    };
    said || inside(value, depth, &|k, v, d| says_error(k, v, d, strict))
}

/// Whether a field, or one inside it, says there are records: a total or count above zero,
/// `has_more` true, or a list of objects.
fn says_records(key: &str, value: &Value, depth: usize) -> bool {
    let key = plain(key);
    let count = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    let said = ((key.contains("total") || key.contains("count") || key.ends_with("estimate"))
        && count.is_some_and(|n| n > 0.0))
        || (matches!(key.as_str(), "hasmore" | "hasnext" | "hasnextpage" | "more" | "moreresults")
            && *value == Value::Bool(true))
        || matches!(value, Value::Array(items) if items.iter().any(Value::is_object));
    said || inside(value, depth, &says_records)
}

/// Whether `test` holds for a field of `value` (an object, or the objects of a list).
fn inside(value: &Value, depth: usize, test: &dyn Fn(&str, &Value, usize) -> bool) -> bool {
    if depth >= LOOK_DEPTH {
        return false;
    }
    let fields = |object: &serde_json::Map<String, Value>| object.iter().any(|(k, v)| test(k, v, depth + 1));
    match value {
        Value::Object(object) => fields(object),
        Value::Array(items) => items.iter().any(|item| item.as_object().is_some_and(fields)),
        _ => false,
    }
}

/// A page of nothing (its position still moves the stream).
pub(super) fn empty_chunk() -> RawChunk {
    let batch = RecordBatch::new_empty(Arc::new(Schema::empty()));
    RawChunk {
        batch,
        rows: Int64Array::from(Vec::<i64>::new()),
        bad: Vec::new(),
        text: true,
        raw_style: inlet_engine::source::RawStyle::Json,
    }
}

/// Decodes a body, on a blocking thread when it is big.
pub(super) async fn decode(
    body: bytes::Bytes,
    selector: JsonPath,
    wanted: Vec<JsonPath>,
    object_is_record: bool,
) -> Result<crate::json::Body, Error> {
    if body.len() < DECODE_ON_BLOCKING_BYTES {
        return crate::json::decode_body(&body, &selector, &wanted, object_is_record).map_err(Error::Internal);
    }
    tokio::task::spawn_blocking(move || crate::json::decode_body(&body, &selector, &wanted, object_is_record))
        .await
        .map_err(|e| Error::Internal(format!("decoding a page: {e}")))?
        .map_err(Error::Internal)
}

/// Where a resource's records are, and whether an object there is one record (not a list
/// gone wrong).
#[derive(Debug, Clone)]
pub(super) struct Selector {
    pub path: JsonPath,
    pub object_is_record: bool,
}

/// The selector: the one set, or chosen now from `body` and kept. A body that is not JSON,
/// or an empty answer, chooses nothing: it is read with a selector nothing matches, and the
/// next body chooses.
pub(super) fn chosen(selector: &mut Option<Selector>, body: &[u8]) -> Selector {
    if let Some(selector) = selector {
        return selector.clone();
    }
    match auto_selector(body) {
        Some(chosen) => selector.insert(chosen).clone(),
        None => Selector {
            path: JsonPath::parse("$['\u{0}']").unwrap_or_else(|_| JsonPath::root()),
            object_is_record: false,
        },
    }
}

/// Where the records of a body are when `data_selector` is not set: the body if it is an
/// array; else its one array field (error lists aside), or one of the usual names; else the
/// body as one record (a resource such as `/me` or `/count`). `None` for a body that is not
/// JSON, and for an object that may be an empty answer or an error (`{}`, a `null` field,
/// something that says error): it chooses nothing.
fn auto_selector(body: &[u8]) -> Option<Selector> {
    let (chosen, object_is_record) = match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(map) => {
            let arrays: Vec<&String> =
                map.iter().filter(|(k, v)| v.is_array() && !plain(k).contains("error")).map(|(k, _)| k).collect();
            let named = ["data", "items", "results", "records", "entries", "value", "rows"]
                .into_iter()
                .find(|name| map.get(*name).is_some_and(Value::is_array));
            match (arrays.as_slice(), named) {
                ([only], _) => (format!("$['{only}']"), false),
                (_, Some(name)) => (name.to_owned(), false),
                _ if map.is_empty()
                    || map.values().any(Value::is_null)
                    || map.iter().any(|(k, v)| says_error(k, v, 0, false)) =>
                {
                    return None;
                }
                _ => ("$".to_owned(), true),
            }
        }
        _ => ("$".to_owned(), false),
    };
    Some(Selector { path: JsonPath::parse(&chosen).unwrap_or_else(|_| JsonPath::root()), object_is_record })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_selection() {
        let chosen = |body: &[u8]| auto_selector(body).map(|s| (s.path.as_str().to_owned(), s.object_is_record));
        assert_eq!(chosen(br#"[{"a":1}]"#), Some(("$".into(), false)));
        assert_eq!(chosen(br#"{"meta":{},"things":[1]}"#), Some(("$['things']".into(), false)));
        assert_eq!(chosen(br#"{"data":[1],"errors":[]}"#), Some(("$['data']".into(), false)));
        assert_eq!(chosen(br#"{"data":[1],"items":[2]}"#), Some(("data".into(), false)));
        assert_eq!(chosen(br#"{"id":1}"#), Some(("$".into(), true)));
        // Lone records that look like envelopes are records still.
        assert_eq!(chosen(br#"{"count":42}"#), Some(("$".into(), true)));
        assert_eq!(chosen(br#"{"kind":"x","etag":"y"}"#), Some(("$".into(), true)));
        assert_eq!(chosen(br#"{"status":"ok","message":"all good"}"#), Some(("$".into(), true)));
        // Empty answers and errors choose nothing.
        assert_eq!(chosen(br#"{"data": null, "next": null}"#), None);
        assert_eq!(chosen(br#"{}"#), None);
        assert_eq!(chosen(br#"{"errors":[{"message":"bad query"}]}"#), None);
        assert_eq!(chosen(br#"{"error":"rate limited"}"#), None);
        assert_eq!(chosen(b"<html>"), None);
    }

    #[test]
    fn error_objects_are_told_from_empty_answers() {
        for empty in [
            &br#"{}"#[..],
            b"null",
            br#"{"kind": "list", "etag": "x"}"#,
            br#"{"data": null, "next": null}"#,
            br#"{"items": [], "meta": {"page": 9}, "total": 0}"#,
            br#"{"results": null, "count": 0}"#,
            br#"{"items": null, "nextPageToken": null}"#,
            br#"{"success": true, "data": null}"#,
            br#"{"status": "ok", "data": null}"#,
            br#"{"data": null, "error": null}"#,
            br#"{"items": null, "offset": 100, "limit": 50, "total": 0}"#,
            br#"{"request_id": "x", "data": null}"#,
            br#"{"resultSizeEstimate": 0}"#,
            br#"{"errors": []}"#,
            br#"{"data": null, "meta": {"total": "0", "has_more": false}}"#,
        ] {
            assert!(empty_answer(empty), "{}", String::from_utf8_lossy(empty));
        }
        for error in [
            &br#"{"message": "temporarily unavailable"}"#[..],
            br#"{"Error": {"code": 7}}"#,
            br#"{"data": null, "error": null, "message": "down"}"#,
            br#"{"title": "Service Unavailable", "status": 503}"#,
            br#"{"success": false}"#,
            br#"{"errors": [{"message": "x"}]}"#,
            br#"{"data": null, "meta": {"error": "rate limited", "code": 429}}"#,
            br#"{"data": null, "meta": {"status": "failed"}}"#,
            br#"{"results": null, "count": 1234}"#,
            br#"{"data": null, "paging": {"has_more": true}}"#,
            br#"{"data": null, "records": [{"id": 1}]}"#,
            b"<html>",
            b"[]",
        ] {
            assert!(!empty_answer(error), "{}", String::from_utf8_lossy(error));
        }
    }
}
